"""The course's exercises under nbgrader: release, and the CI gates.

    python -m peftlab.grader.exercises release            # regenerate exercises/ from solutions/
    python -m peftlab.grader.exercises check              # CI: no drift, no leak, solutions full marks, blanks zero
    python -m peftlab.grader.exercises grade A NOTEBOOK   # grade one notebook of assignment A, print the score

`grade` and the gates set the assignment up with `peftlab.grader.assignment`
and grade with `peftlab.grader.worker.autograde`, as the class grader does
(same checks, sandbox, parameters, probe seed and expected values, canaries, limits).
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from multiprocessing import util as mp_util
from pathlib import Path

from .assignment import Assignment
from .course import (
    RELEASE,
    SOURCE,
    GradingError,
    assignments,
    course_root,
    fill_solutions,  # noqa: F401  (where the course's tests and benchmark have filled notebooks)
    scratch_course,
    source_notebook,
)
from .outcome import Outcome
from .settings import Settings
from .worker import autograde

_REGION = re.compile(r"### BEGIN (SOLUTION|HIDDEN TESTS)\n(.*?)### END \1", re.S)


def release(root: str | Path) -> list[Path]:
    """Regenerate exercises/<assignment>/ for every assignment; return the written folders."""
    root = Path(root)
    course = scratch_course(root)
    written = []
    try:
        for name in assignments(root):
            dest = root / RELEASE / name
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(course / RELEASE / name, dest)
            written.append(dest)
    finally:
        shutil.rmtree(course, ignore_errors=True)
    return written


def drift(root: str | Path) -> list[str]:
    """Differences between the committed exercises/ and what nbgrader generates now."""
    root = Path(root)
    course = scratch_course(root)
    out = []
    try:
        for name in assignments(root):
            fresh, committed = course / RELEASE / name, root / RELEASE / name
            if not committed.is_dir():
                out.append(f"{committed}: missing; run `python -m peftlab.grader.exercises release`")
                continue
            fresh_files = {p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file()}
            committed_files = {p.relative_to(committed) for p in committed.rglob("*") if p.is_file()}
            for rel in sorted(fresh_files - committed_files):
                out.append(f"{committed / rel}: missing from the release")
            for rel in sorted(committed_files - fresh_files):
                out.append(f"{committed / rel}: not generated from {SOURCE}/ (stale or hand-made)")
            for rel in sorted(fresh_files & committed_files):
                if not filecmp.cmp(fresh / rel, committed / rel, shallow=False):
                    out.append(f"{committed / rel}: differs from what nbgrader generates from {SOURCE}/{name}")
        extra = {d.name for d in (root / RELEASE).iterdir() if d.is_dir()} - set(assignments(root))
        out += [f"{root / RELEASE / d}: no matching assignment in {SOURCE}/" for d in sorted(extra)]
    finally:
        shutil.rmtree(course, ignore_errors=True)
    if out:
        out.append("fix: edit the notebook in solutions/, then run `python -m peftlab.grader.exercises release`")
    return out


def leaks(root: str | Path) -> list[str]:
    """Solution code or hidden tests that appear in a released notebook."""
    root = Path(root)
    out = []
    for name in assignments(root):
        secret, public = set(), set()
        for nb_path in (root / SOURCE / name).glob("*.ipynb"):
            for cell in json.loads(nb_path.read_text())["cells"]:
                text = "".join(cell["source"])
                for _, body in _REGION.findall(text):
                    secret |= {ln.strip() for ln in body.splitlines() if len(ln.strip()) > 12}
                public |= {ln.strip() for ln in _REGION.sub("", text).splitlines()}
        secret -= public  # a line the student is shown anyway is no leak
        for nb_path in (root / RELEASE / name).glob("*.ipynb"):
            text = nb_path.read_text()
            if "BEGIN SOLUTION" in text or "BEGIN HIDDEN TESTS" in text:
                out.append(f"{nb_path}: holds a BEGIN SOLUTION / BEGIN HIDDEN TESTS marker")
            released = {
                ln.strip() for cell in json.loads(text)["cells"] for ln in "".join(cell["source"]).splitlines()
            }
            for line in sorted(secret & released):
                out.append(f"{nb_path}: solution or hidden-test line leaked: {line[:80]!r}")
    return out


def grade(root: str | Path, assignment: str, notebook: str | Path, student: str = "student",
          settings: Settings | None = None, seeds: int = 0) -> Outcome:
    """Grade one notebook as `student`'s submission of `assignment`, the way the class grader does.

    The assignment is set up as for a class graded in the course's `grading/work`: the same class secret,
    so the same probe seed rule, and the same cache of the solution's expected values. `seeds=N` grades
    under the class's N gate seeds instead of the submission's own (`Assignment.gate_seeds`): the first
    decides the points, and `Outcome.audit` holds the points under the others, for the fair-grading gate
    (one run of the notebook, and one run of the solution for every notebook graded so)."""
    root, notebook = Path(root).resolve(), Path(notebook)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 0:
        raise GradingError(f"seeds={seeds!r}: expected a whole number >= 0 (0: the submission's own seed)")
    ready = Assignment(root, assignment, root / "grading" / "work", settings or Settings())
    if notebook.name != ready.notebook:
        raise GradingError(f"{notebook}: assignment {assignment} has the notebook {ready.notebook!r}; "
                           "name the file like one.")
    tmp = Path(tempfile.mkdtemp(prefix="peftlab-grade-"))
    try:
        ready.prepare(into=tmp, template=_template(root, assignment))
        staged = tmp / "staging" / ready.notebook
        staged.parent.mkdir(parents=True)
        shutil.copyfile(notebook, staged)
        (tmp / "scratch").mkdir()
        sha256 = _sha256(staged)
        chosen = ready.gate_seeds(seeds) if seeds else [ready.probe_seed(student, sha256)]
        ready.expect(chosen)
        return autograde(ready.job(student, staged, tmp / "scratch", sha256=sha256,
                                   hide=[str(notebook.resolve().parent)], seeds=chosen))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_TEMPLATES: dict[tuple[str, str, str], Path] = {}


def _template(root: Path, assignment: str) -> Path:
    """The assignment's scratch course, generated once per process for the same sources: nbgrader's
    generate step (a gradebook, its migrations, the release) took about a fifth of each notebook the
    gates grade, and they grade up to a dozen notebooks of one assignment. Removed when the process exits."""
    src = root / SOURCE / assignment
    digest = hashlib.sha256()
    for path in sorted(p for p in src.rglob("*") if p.is_file() and ".ipynb_checkpoints" not in p.parts):
        digest.update(path.relative_to(src).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    key = (str(root), assignment, digest.hexdigest())
    if key not in _TEMPLATES or not _TEMPLATES[key].is_dir():
        folder = Path(tempfile.mkdtemp(prefix="peftlab-template-"))
        # Removed at exit, also in a process pool's worker (the gate's), where atexit handlers do not run.
        mp_util.Finalize(None, shutil.rmtree, args=(folder, True), exitpriority=0)
        # In a folder of its own, which the sandbox hides from the kernels as it hides `prepare`'s.
        _TEMPLATES[key] = scratch_course(root, [assignment], into=folder / "template")
    return _TEMPLATES[key]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


CHECK_SEEDS = 3  # seeds the CI gate grades each solution and blank under


def check(root: str | Path, log=print) -> list[str]:
    """The CI gate: no drift, no leak, every solution full marks, every blank release zero."""
    root = Path(root)
    problems = drift(root) + leaks(root)
    for name in assignments(root):
        source_nb = source_notebook(root, name)
        # Under the class's CHECK_SEEDS gate seeds: one solution run serves both, and every seed must agree.
        full = grade(root, name, source_nb, student="solution", seeds=CHECK_SEEDS)
        log(full.summary())
        worst = min([full.auto_score, *(sum(p.values()) for p in full.audit.values())])
        if full.status != "graded" or worst != full.auto_max or not full.cells:
            problems.append(f"{source_nb}: the solution earns {worst:g} of {full.auto_max:g} at one of "
                            f"{CHECK_SEEDS} seeds ({full.status})")
        blank = grade(root, name, root / RELEASE / name / source_nb.name, student="blank", seeds=CHECK_SEEDS)
        log(blank.summary())
        best = max([blank.auto_score, *(sum(p.values()) for p in blank.audit.values())])
        if blank.status != "graded" or best != 0:
            problems.append(f"{root / RELEASE / name / source_nb.name}: the untouched exercise earns "
                            f"{best:g} points at one of {CHECK_SEEDS} seeds ({blank.status}); a test passes "
                            "without the student's work")
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("release", "check", "grade") or (argv[0] == "grade" and len(argv) != 3):
        print(__doc__)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        root = course_root()
        if argv[0] == "release":
            for d in release(root):
                print(f"wrote {d}")
            return 0
        if argv[0] == "grade":
            print(grade(root, argv[1], argv[2]).summary())
            return 0
        found = check(root)
    except GradingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for msg in found:
        print(msg)
    print(f"nbgrader gate: {len(assignments(root))} assignments, {len(found)} problems")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
