"""nbgrader for the course: `solutions/` is the source, `exercises/` the release.

    python -m peftlab.nbgrade release            # regenerate exercises/ from solutions/
    python -m peftlab.nbgrade check              # CI: no drift, no leak, solutions full marks, blanks zero
    python -m peftlab.nbgrade grade A NOTEBOOK   # autograde one notebook of assignment A, print the score

Every nbgrader run here happens in a scratch course directory: a copy of
`solutions/`, its own gradebook, its own submitted/ and autograded/ folders.
The repository is never written to except by `release`.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

# nbgrader's gradebook triggers SQLAlchemy's "not in session" warning on every submission it reads;
# it is harmless and would bury the grader's own report.
warnings.filterwarnings("ignore", message=r".*not in session, add operation along.*")

SOURCE = "solutions"
RELEASE = "exercises"
CELL_TIMEOUT_S = 300  # nbgrader's default of 30 s is too short for a training cell on a laptop
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
TEXT_STUB = "YOUR ANSWER HERE"
_REGION = re.compile(r"### BEGIN (SOLUTION|HIDDEN TESTS)\n(.*?)### END \1", re.S)


class GradingError(RuntimeError):
    """nbgrader could not run; the message says which assignment and why."""


def course_root(start: str | Path | None = None) -> Path:
    """The directory holding solutions/ and grading/ (searched upward from `start` or the cwd)."""
    here = Path(start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / SOURCE).is_dir() and (d / "grading").is_dir():
            return d
    raise GradingError(f"no course root above {here}: expected a directory with {SOURCE}/ and grading/.")


def assignments(root: str | Path) -> list[str]:
    """Assignment names: folders of solutions/ that hold a notebook."""
    src = Path(root) / SOURCE
    return sorted(d.name for d in src.iterdir() if d.is_dir() and any(d.glob("*.ipynb")))


def settings(course: str | Path, cell_timeout: int = CELL_TIMEOUT_S, work: str = "."):
    """nbgrader's traitlets config for a course directory laid out like the repository.

    `work` (relative to the course) holds the gradebook and the submitted/,
    autograded/ and feedback/ folders; grading/nbgrader_config.py puts them in
    grading/work so that the repository's own folders stay clean.
    """
    from traitlets.config import Config

    course = Path(course).resolve()
    c = Config()
    c.CourseDirectory.root = str(course)
    c.CourseDirectory.source_directory = SOURCE
    c.CourseDirectory.release_directory = RELEASE
    for step in ("submitted", "autograded", "feedback"):
        setattr(c.CourseDirectory, f"{step}_directory", os.path.normpath(f"{work}/{step}"))
    c.CourseDirectory.db_url = f"sqlite:///{(course / work / 'gradebook.db').resolve()}"
    c.ClearSolutions.code_stub = {"python": CODE_STUB}
    c.ClearSolutions.text_stub = TEXT_STUB
    c.Execute.timeout = cell_timeout
    c.Execute.kernel_name = "python3"
    return c


def _tools_on_path() -> None:
    """nbgrader runs `alembic` from PATH: make this interpreter's scripts findable without an activated venv."""
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def _api(course: Path, **kw):
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    _tools_on_path()
    config = settings(course, **kw)
    coursedir = CourseDirectory(config=config)
    return NbGraderAPI(coursedir=coursedir, config=config)


def scratch_course(root: str | Path, names: list[str] | None = None, into: str | Path | None = None) -> Path:
    """A scratch course with a copy of the given assignments' sources, released into its gradebook."""
    root = Path(root)
    course = Path(into or tempfile.mkdtemp(prefix="peftlab-course-"))
    for name in names or assignments(root):
        src = root / SOURCE / name
        if not src.is_dir():
            raise GradingError(f"{src}: no such assignment; choose one of {', '.join(assignments(root))}.")
        shutil.copytree(src, course / SOURCE / name, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        result = _api(course).generate_assignment(name, force=True)
        if not result.get("success"):
            raise GradingError(f"nbgrader could not generate {name}:\n{result.get('log', '')}{result.get('error', '')}")
    return course


# --------------------------------------------------------------------- release
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
                out.append(f"{committed}: missing; run `python -m peftlab.nbgrade release`")
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
        out.append("fix: edit the notebook in solutions/, then run `python -m peftlab.nbgrade release`")
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


def fill_solutions(root: str | Path, assignment: str, only: set[str] | None = None):
    """The released notebook of `assignment` with its solution cells (all, or the grade ids in `only`)
    filled in from the source, markers removed: what a student who solved them submits."""
    import nbformat

    root = Path(root)
    (source,) = sorted((root / SOURCE / assignment).glob("*.ipynb"))
    solved = {c.metadata["nbgrader"]["grade_id"]: re.sub(r"\n?[ \t]*### (BEGIN|END) SOLUTION", "", c.source)
              for c in nbformat.read(source, as_version=4).cells if c.metadata.get("nbgrader", {}).get("solution")}
    nb = nbformat.read(root / RELEASE / assignment / source.name, as_version=4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in solved and (only is None or gid in only):
            cell.source = solved[gid]
    return nb


# ------------------------------------------------------------------- grading
@dataclass
class Grade:
    """One autograded notebook: points per graded cell, from nbgrader's gradebook."""

    assignment: str
    student: str
    notebook: str
    cells: dict[str, tuple[float | None, float]] = field(default_factory=dict)  # id -> (auto score, max)
    manual: dict[str, tuple[float | None, float]] = field(default_factory=dict)  # id -> (0 if unanswered, max)
    errors: dict[str, str] = field(default_factory=dict)  # id -> "ExceptionName: message" of a failed cell
    log: str = ""

    @property
    def auto_score(self) -> float:
        return sum(s or 0.0 for s, _ in self.cells.values())

    @property
    def auto_max(self) -> float:
        return sum(m for _, m in self.cells.values())

    def summary(self) -> str:
        lines = [f"{self.student} / {self.assignment}: {self.auto_score:g} of {self.auto_max:g} autograded points"
                 + (f" (+{sum(m for _, m in self.manual.values()):g} graded by hand)" if self.manual else "")]
        for gid, (s, m) in self.cells.items():
            lines.append(f"  {gid:<28} {s if s is not None else '-':>4} / {m:g}")
            if gid in self.errors:
                lines.append(f"      {self.errors[gid][:300]}")
        return "\n".join(lines)


def cell_errors(notebook: str | Path) -> dict[str, str]:
    """{grade_id: "Name: message"} for every graded cell whose outputs hold an error."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    out = {}
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        for o in cell.get("outputs", []):
            if gid and o.get("output_type") == "error":
                out[gid] = f"{o.get('ename', 'Error')}: {o.get('evalue', '')}".strip()
    return out


def read_grades(course: Path, assignment: str, student: str) -> list[Grade]:
    """Grades of one student's submission as stored in the course's gradebook."""
    from nbgrader.api import Gradebook

    _tools_on_path()
    with Gradebook(settings(course).CourseDirectory.db_url) as gb:
        sub = gb.find_submission(assignment, student)
        out = []
        for nb in sub.notebooks:
            g = Grade(assignment, student, nb.name)
            for grade in nb.grades:
                if grade.cell.cell_type == "markdown":  # written answers are graded by hand
                    g.manual[grade.name] = (grade.auto_score, grade.max_score)
                else:
                    g.cells[grade.name] = (grade.auto_score, grade.max_score)
            out.append(g)
        return out


def autograde(root: str | Path, assignment: str, notebook: str | Path, student: str = "student",
              cell_timeout: int = CELL_TIMEOUT_S) -> Grade:
    """Autograde one notebook as `student`'s submission of `assignment` in a scratch course."""
    root, notebook = Path(root), Path(notebook)
    course = scratch_course(root, [assignment])
    try:
        names = [p.name for p in (course / RELEASE / assignment).glob("*.ipynb")]
        if notebook.name not in names:
            raise GradingError(f"{notebook}: assignment {assignment} has notebooks {names}; name the file like one.")
        dest = course / "submitted" / student / assignment
        dest.mkdir(parents=True)
        shutil.copy(notebook, dest / notebook.name)
        result = _api(course, cell_timeout=cell_timeout).autograde(assignment, student, force=True, create=True)
        if not result.get("success"):
            raise GradingError(f"nbgrader could not grade {notebook}:\n{result.get('error', '')}")
        (grade,) = [g for g in read_grades(course, assignment, student) if g.notebook == notebook.stem]
        grade.log = result.get("log", "")
        graded = course / "autograded" / student / assignment / notebook.name
        if graded.is_file():
            grade.errors = cell_errors(graded)
        return grade
    finally:
        shutil.rmtree(course, ignore_errors=True)


def check(root: str | Path, log=print) -> list[str]:
    """The CI gate: no drift, no leak, every solution full marks, every blank release zero."""
    root = Path(root)
    problems = drift(root) + leaks(root)
    for name in assignments(root):
        for source_nb in sorted((root / SOURCE / name).glob("*.ipynb")):
            full = autograde(root, name, source_nb, student="solution")
            log(full.summary())
            if full.auto_score != full.auto_max or not full.cells:
                problems.append(f"{source_nb}: the solution earns {full.auto_score:g} of {full.auto_max:g}")
            blank = autograde(root, name, root / RELEASE / name / source_nb.name, student="blank")
            log(blank.summary())
            if blank.auto_score != 0:
                problems.append(f"{root / RELEASE / name / source_nb.name}: the untouched exercise earns "
                                f"{blank.auto_score:g} points; a test passes without the student's work")
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("release", "check", "grade") or (argv[0] == "grade" and len(argv) != 3):
        print(__doc__)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = course_root()
    try:
        if argv[0] == "release":
            for d in release(root):
                print(f"wrote {d}")
            return 0
        if argv[0] == "grade":
            print(autograde(root, argv[1], argv[2]).summary())
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
