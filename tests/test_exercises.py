"""CI gates of the exercises (nbgrader): no drift, no leak, solutions full marks, blanks zero.

Each autograde runs the notebook headlessly in a scratch course directory, so
these tests also prove every solution and every untouched release executes
under nbgrader without crashing the grader.
"""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from peftlab.grader import exercises
from peftlab.grader.course import GradingError, assignments

ROOT = Path(__file__).resolve().parent.parent
ALL_ASSIGNMENTS = assignments(ROOT)
# PEFTLAB_GATE_ONLY=07,08 grades only the assignments whose names contain one of these (as in
# tests/test_fair_grading.py), for working on one; unset, every assignment is graded.
_ONLY = [o for o in os.environ.get("PEFTLAB_GATE_ONLY", "").split(",") if o]
ASSIGNMENTS = [a for a in ALL_ASSIGNMENTS if not _ONLY or any(o in a for o in _ONLY)]
SEEDS = int(os.environ.get("PEFTLAB_GATE_SEEDS", "5"))  # as tests/test_fair_grading.py


def test_there_are_eight_assignments():
    assert ALL_ASSIGNMENTS == ["01_lora_from_scratch", "02_rank_alpha_sweep", "03_target_modules",
                               "04_qlora_memory", "05_custom_dataset", "06_adapters", "07_methods", "08_custom_metric"]


def test_release_is_what_nbgrader_generates():
    assert exercises.drift(ROOT) == []


def test_release_leaks_no_solution_or_hidden_test():
    assert exercises.leaks(ROOT) == []


def _copy_course(tmp_path):
    course = tmp_path / "course"
    for d in ("solutions", "exercises", "grading"):
        shutil.copytree(ROOT / d, course / d, ignore=shutil.ignore_patterns("work"))
    return course


def test_drift_and_leak_are_detected(tmp_path):
    course = _copy_course(tmp_path)
    nb_path = course / "exercises" / "01_lora_from_scratch" / "lora_from_scratch.ipynb"
    nb = json.loads(nb_path.read_text())
    stub = next(c for c in nb["cells"] if "raise NotImplementedError()" in "".join(c["source"]))
    stub["source"] = ["self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=base.weight.dtype))\n"]
    nb_path.write_text(json.dumps(nb, indent=1))
    (course / "exercises" / "01_lora_from_scratch" / "stray.txt").write_text("x")
    found = exercises.drift(course)
    assert any("lora_from_scratch.ipynb: differs" in f for f in found)
    assert any("stray.txt: not generated" in f for f in found)
    assert any("leaked" in f and "lora_B = nn.Parameter" in f for f in exercises.leaks(course))


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_full_marks_blank_zero(assignment, tiny_dir):
    # tiny_dir: the model is built before grading, as on a grading machine, not inside a graded notebook
    # Under the gate's seeds (one solution run for both, cached), and under each: full marks and zero at every seed.
    (source,) = sorted((ROOT / "solutions" / assignment).glob("*.ipynb"))
    full = exercises.grade(ROOT, assignment, source, student="solution", seeds=SEEDS)
    assert full.cells and full.auto_score == full.auto_max, full.summary()
    assert full.auto_max >= 9 and full.manual, "every exercise carries autograded and hand-graded points"
    assert len(full.audit) == SEEDS - 1
    assert all(sum(points.values()) == full.auto_max for points in full.audit.values()), full.audit
    blank = exercises.grade(ROOT, assignment, ROOT / "exercises" / assignment / source.name, student="blank",
                            seeds=SEEDS)
    assert blank.auto_score == 0 and blank.auto_max == full.auto_max, blank.summary()
    assert all(sum(points.values()) == 0 for points in blank.audit.values()), blank.audit
    assert set(blank.cells) <= set(blank.errors), "every test cell of a blank notebook fails with a reason"


def test_partial_solution_earns_its_points(tmp_path):
    """Exercise 1 with only the rank-k factorization solved earns exactly that cell's 2 points."""
    import nbformat

    partial = tmp_path / "lora_from_scratch.ipynb"
    nbformat.write(exercises.fill_solutions(ROOT, "01_lora_from_scratch", only={"rank_k"}), partial)
    grade = exercises.grade(ROOT, "01_lora_from_scratch", partial, student="partial", seeds=SEEDS)
    assert grade.cells["test_rank_k"] == (2.0, 2.0), grade.summary()
    assert grade.auto_score == 2.0, grade.summary()
    assert all(sum(points.values()) == 2.0 for points in grade.audit.values()), grade.audit


def test_wrongly_named_notebook_is_a_clear_error(tmp_path):
    bad = tmp_path / "my_homework.ipynb"
    shutil.copy(ROOT / "exercises" / "05_custom_dataset" / "custom_dataset.ipynb", bad)
    with pytest.raises(GradingError, match="name the file like one"):
        exercises.grade(ROOT, "05_custom_dataset", bad)
    with pytest.raises(GradingError, match="seeds=-1: expected a whole number"):
        exercises.grade(ROOT, "05_custom_dataset", bad, seeds=-1)


def _validate(assignment, notebook, name, tmp_path):
    """`nbgrader validate` as JupyterLab's Validate button runs it for a student working in exercises/."""
    import nbformat

    work = tmp_path / assignment
    shutil.copytree(ROOT / "exercises" / assignment, work)
    nbformat.write(notebook, work / name)
    bindir = Path(sys.executable).parent
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    # The shipped per-cell limit (Settings.validate_timeout) is checked below; here the limit is far above any cell so that the
    # outcome does not depend on the machine's load (on a 2-core machine shared by several jobs, exercise
    # 02's sweep cell has taken 176 s).
    done = subprocess.run([str(bindir / "nbgrader"), "validate", str(work / name), "--Execute.timeout=3600"],
                          cwd=ROOT / "exercises", env=env, capture_output=True, text=True, timeout=7200)
    return done.stdout + done.stderr


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_validate_passes_every_solution_and_fails_every_blank(assignment, tmp_path, tiny_dir):
    import nbformat

    (source,) = sorted((ROOT / "solutions" / assignment).glob("*.ipynb"))
    out = _validate(assignment, exercises.fill_solutions(ROOT, assignment), source.name, tmp_path / "solved")
    assert "Success! Your notebook passes all the tests." in out, out[-3000:]
    blank = nbformat.read(ROOT / "exercises" / assignment / source.name, as_version=4)
    out = _validate(assignment, blank, source.name, tmp_path / "blank")
    assert "VALIDATION FAILED" in out and "Success!" not in out, out[-3000:]


def test_validate_timeout_fits_the_cell_budget():
    """Validate reads nbgrader_config.py from where JupyterLab started: the course root or exercises/.
    Both hold the limit as a literal (a student's Jupyter reads them); its one home is Settings."""
    import re

    from peftlab.grader.settings import Settings

    assert Settings.validate_timeout >= 3 * 60, "Validate needs 3x the 60 s per-cell budget"
    for config in (ROOT / "nbgrader_config.py", ROOT / "exercises" / "nbgrader_config.py"):
        found = re.findall(r"^c\.Execute\.timeout = (\d+)$", config.read_text(), re.M)
        assert found == [str(Settings.validate_timeout)], f"{config}: set c.Execute.timeout = {Settings.validate_timeout}"


def _solution_words(cells) -> set[str]:
    """The keyword arguments (`name=`) and their string values written in a notebook's solution regions:
    the choices a student has to make (names of things, dictionary keys and plain words are not)."""
    found = set()
    for cell in cells:
        src = "".join(cell["source"])
        for region in re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", src, re.S):
            try:
                tree = ast.parse(textwrap.dedent(region))
            except SyntaxError:  # a markdown answer
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.keyword) and node.arg:
                    found.add(f"{node.arg}=")  # which argument to pass
                    if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                        found.add(node.value.value)  # and the option chosen, e.g. combination_type="cat"
    return found


def _hints(cells) -> list[tuple[str, str]]:
    """(grade_id, text) of every `hint=` a test cell gives (the student sees it when the test fails)."""
    out = []
    for cell in cells:
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")
        if cell["cell_type"] != "code" or not gid.startswith("test_"):
            continue
        for node in ast.walk(ast.parse("".join(cell["source"]))):
            if isinstance(node, ast.keyword) and node.arg == "hint" and isinstance(node.value, ast.Constant):
                out.append((gid, node.value.value))
    return out


@pytest.mark.parametrize("assignment", ALL_ASSIGNMENTS)
def test_hints_do_not_state_the_solution(assignment):
    """A hint diagnoses (which function, what differs); it never names a value or a keyword argument the
    solution writes, even one the exercise's text mentions among others: the hint would pick it out."""
    nb = json.loads(next((ROOT / "solutions" / assignment).glob("*.ipynb")).read_text())
    leaks = [(gid, w) for gid, hint in _hints(nb["cells"]) for w in _solution_words(nb["cells"])
             if re.search(rf"(?<![\w=]){re.escape(w)}" + ("" if w.endswith("=") else r"(?!\w)"), hint)]
    assert leaks == [], f"{assignment}: hints that state the solution: {leaks}"
