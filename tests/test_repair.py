"""Notebooks whose nbgrader metadata an editor stripped: repaired where unambiguous, else a fair status."""

import json
import shutil
from pathlib import Path

import pytest
from peftlab.grader import exercises
from peftlab.grader.inspect import inspect
from peftlab.grader.repair import reattach, repair_file

FIXTURE = Path(__file__).parent / "fixtures" / "course"
ASSIGNMENT, NB = "90_fixture", "fixture.ipynb"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    shutil.copytree(FIXTURE, root, dirs_exist_ok=True)
    exercises.release(root)
    return root / "exercises" / ASSIGNMENT / NB


def _answered(release):
    """The release with both functions written and the written answer filled, as a student saves it."""
    nb = json.loads(release.read_text())
    for cell in nb["cells"]:
        gid = cell["metadata"].get("nbgrader", {}).get("grade_id")
        if gid == "double":
            cell["source"] = "def double(x):\n    return factor * x"
        elif gid == "halve":
            cell["source"] = "def halve(x):\n    return x / 2"
        elif gid == "explain":
            cell["source"] = "Because 2(x + y) = 2x + 2y."
    return nb


def _strip(nb):
    for cell in nb["cells"]:
        cell["metadata"] = {k: v for k, v in cell["metadata"].items() if k != "nbgrader"}  # as Colab saves it
    return nb


def _save(tmp_path, nb, name="sub.ipynb"):
    path = tmp_path / name
    path.write_text(json.dumps(nb))
    return path


def test_stripped_notebook_is_repaired_and_then_passes_the_checks(release, tmp_path):
    original = _answered(release)
    path = _save(tmp_path, _strip(json.loads(json.dumps(original))))
    assert inspect(path, release).status == "tampered"  # what nbgrader alone would say
    status, reason, note = repair_file(path, release)
    assert (status, reason) == ("", "")
    for gid in ("double", "test_double", "halve", "test_halve", "explain"):
        assert gid in note
    assert "test_double (cell 5, same text)" in note
    repaired = json.loads(path.read_text())
    for mine, want in zip(repaired["cells"], original["cells"]):
        assert mine["metadata"].get("nbgrader") == want["metadata"].get("nbgrader")
        assert mine["source"] == want["source"]  # the student's work untouched
    assert inspect(path, release).status == ""


def test_a_notebook_with_its_metadata_is_left_alone(release, tmp_path):
    path = _save(tmp_path, _answered(release))
    before = path.read_bytes()
    assert repair_file(path, release) == ("", "", "")
    assert path.read_bytes() == before


def test_ambiguous_cells_get_metadata_missing_with_the_fix(release, tmp_path):
    nb = _strip(_answered(release))
    i = next(k for k, c in enumerate(nb["cells"]) if "def double" in "".join(c["source"]))
    nb["cells"].insert(i, {"cell_type": "code", "metadata": {}, "source": "import math", "outputs": [],
                           "execution_count": None})  # two code cells where one answer was
    path = _save(tmp_path, nb)
    status, reason, _ = repair_file(path, release)
    assert status == "metadata-missing"
    assert "double" in reason and "Colab" in reason and "Fix:" in reason


def test_a_really_deleted_test_cell_stays_tampered(release, tmp_path):
    nb = _strip(_answered(release))
    nb["cells"] = [c for c in nb["cells"] if "halve(5)" not in "".join(c["source"])]  # test_halve deleted
    fixed = reattach(nb, json.loads(release.read_text()))
    assert "test_halve" in fixed.deleted
    path = _save(tmp_path, nb)
    assert repair_file(path, release)[0] == ""  # not excused as stripped metadata ...
    verdict = inspect(path, release)
    assert verdict.status == "tampered" and "test_halve" in verdict.reason  # ... but judged by the checks
