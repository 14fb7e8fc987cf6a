"""Feedback for a notebook stopped at the wall limit names the running cell and shows the notebook up to it;
reasons in tables are cut with their end kept."""

import json
import os
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from peftlab.grader import exercises, sandbox
from peftlab.grader.outcome import CLIP, Outcome, clip
from peftlab.grader.preprocessors import report
from peftlab.grader.progress import STOPPED, partial_notebook

FIXTURE = Path(__file__).parent / "fixtures" / "course"
ASSIGNMENT, NB = "90_fixture", "fixture.ipynb"


def _code(source, gid=None, outputs=()):
    cell = nbformat.v4.new_code_cell(source)
    if gid:
        cell.metadata["nbgrader"] = {"grade_id": gid, "solution": True, "grade": False, "locked": False}
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=t) for t in outputs]
    return cell


def test_partial_notebook_ends_at_the_running_cell(tmp_path):
    findings = str(tmp_path / "findings.jsonl")
    cells = [_code("x = 1\nprint('before')", outputs=["before\n"]), _code("while True:\n    pass", gid="halve")]
    for i, cell in enumerate(cells):
        report(findings, kind="running", index=i, label=f"cell {i + 1}", cell=dict(cell, outputs=[]))
        if i == 0:
            report(findings, kind="ran", index=i, cell=json.loads(json.dumps(cell)))
    path, running = partial_notebook(findings, tmp_path / "partial.ipynb", 900)
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert running == "cell 2" and [c.source for c in nb.cells] == [c.source for c in cells]
    assert nb.cells[0].outputs[0]["text"] == "before\n"
    assert nb.cells[1].outputs[0]["text"] == STOPPED.format(limit=900)


def test_a_probe_running_at_the_limit_is_named_never_shown(tmp_path):
    findings = str(tmp_path / "findings.jsonl")
    report(findings, kind="ran", index=0, cell=json.loads(json.dumps(_code("y = 2"))))
    report(findings, kind="running", index=1, label="a grading probe")  # what progress.started writes for one
    path, running = partial_notebook(findings, tmp_path / "partial.ipynb", 60)
    nb = nbformat.read(path, as_version=4)
    assert running == "a grading probe"
    assert nb.cells[-1].source == "# a grading probe" and "probe(" not in json.dumps(nb)


def test_nothing_recorded_gives_no_notebook(tmp_path):
    assert partial_notebook(tmp_path / "none.jsonl", tmp_path / "p.ipynb", 60) == (None, "")


def test_reasons_are_cut_keeping_their_end():
    long = "AssertionError: labels differ: " + "-100, " * 400 + "expected 7 at position 12, got 3"
    cut = clip(long)
    assert cut.startswith("AssertionError: labels differ") and cut.endswith("expected 7 at position 12, got 3")
    assert "characters left out" in cut and len(cut) < CLIP + 60
    assert clip("short") == "short"
    out = Outcome(student="amy", status="graded", grades={"t": {"score": 0, "max": 1, "manual": False}},
                  errors={"t": long})
    assert "got 3" in out.summary()


@pytest.mark.skipif(sys.platform != "linux" or (not sandbox.bwrap_path() and not os.environ.get("CI")),
                    reason="grading runs kernels in bubblewrap (Linux)")
def test_wall_timeout_feedback_names_the_cell_and_shows_the_notebook(tmp_path):
    from peftlab.grader.batch import Batch
    from peftlab.grader.settings import GRADING_PARAMETERS, Settings

    course = tmp_path / "course"
    shutil.copytree(FIXTURE, course)
    exercises.release(course)
    nb = nbformat.read(course / "exercises" / ASSIGNMENT / NB, as_version=4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid == "double":
            cell.source = "def double(x):\n    return factor * x\nprint('double is defined')"
        if gid == "halve":
            cell.source = "import time\nwhile True:\n    time.sleep(0.1)"
    folder = tmp_path / "class"
    folder.mkdir()
    nbformat.write(nb, folder / "stuck.ipynb")
    # Long enough for a kernel to start on a busy machine; the loop keeps it running past the limit.
    settings = Settings(workers=1, cell_timeout=600, wall_timeout=45, parameters={**GRADING_PARAMETERS, "factor": 2},
                        sandbox="bwrap")
    batch = Batch(course, ASSIGNMENT, tmp_path / "work", settings, log=lambda *a: None)
    ((sub, out),) = batch.run([folder])
    assert out.status == "timeout" and "while cell" in out.reason and "(halve)" in out.reason
    page = (batch.work / "feedback" / ASSIGNMENT / "stuck" / "fixture.html").read_text()
    assert "double is defined" in page  # the cells before it, with their outputs
    assert "was still running when the 45 s limit" in page
    assert "while True:" in re.sub(r"<[^>]+>", "", page)  # the running cell's code (highlighted: tags between)
