"""The course as nbgrader sees it: `solutions/` is the source, `exercises/` the release.

This module is the one place that builds nbgrader's configuration and its API
object. Every nbgrader run of the course happens in a scratch course directory
(a copy of one assignment's source, its own gradebook, submitted/ and
autograded/ folders); the repository is written to only by `exercises.release`.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from .settings import Settings

# nbgrader's gradebook triggers SQLAlchemy's "not in session" warning on every submission it reads;
# it is harmless and would bury the grader's own report.
warnings.filterwarnings("ignore", message=r".*not in session, add operation along.*")

SOURCE = "solutions"
RELEASE = "exercises"
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
TEXT_STUB = "YOUR ANSWER HERE"


class GradingError(RuntimeError):
    """Grading could not start; the message says which assignment or file and what to do."""


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


def source_notebook(root: str | Path, assignment: str) -> Path:
    """The one instructor notebook of `assignment`."""
    names = assignments(root)
    if assignment not in names:
        raise GradingError(f"no assignment {assignment!r} in {Path(root) / SOURCE}; choose one of {', '.join(names)}.")
    (source,) = sorted((Path(root) / SOURCE / assignment).glob("*.ipynb"))
    return source


def nbgrader_config(course: str | Path, cell_timeout: int | None = None, work: str = "."):
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
    c.CourseDirectory.db_url = gradebook_url(course / work)
    c.ClearSolutions.code_stub = {"python": CODE_STUB}
    c.ClearSolutions.text_stub = TEXT_STUB
    c.Execute.timeout = Settings.cell_timeout if cell_timeout is None else cell_timeout
    c.Execute.kernel_name = "python3"
    return c


def gradebook_url(folder: str | Path) -> str:
    return f"sqlite:///{(Path(folder) / 'gradebook.db').resolve()}"


def tools_on_path() -> None:
    """nbgrader runs `alembic` from PATH: make this interpreter's scripts findable without an activated venv."""
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def nbgrader_api(config):
    """nbgrader's API object for a config made by `nbgrader_config` (and possibly extended)."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    tools_on_path()
    return NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)


def generate(course: Path, assignment: str, db_folder: Path | None = None) -> None:
    """Release `assignment` in `course` and register it in the gradebook (the course's own by default)."""
    config = nbgrader_config(course)
    if db_folder is not None:
        config.CourseDirectory.db_url = gradebook_url(db_folder)
    result = nbgrader_api(config).generate_assignment(assignment, force=True)
    if not result.get("success"):
        raise GradingError(f"nbgrader could not generate {assignment}:\n{result.get('log', '')}{result.get('error', '')}")


def scratch_course(root: str | Path, names: list[str] | None = None, into: str | Path | None = None) -> Path:
    """A scratch course with a copy of the given assignments' sources, released into its gradebook."""
    root = Path(root)
    course = Path(into or tempfile.mkdtemp(prefix="peftlab-course-"))
    for name in names or assignments(root):
        src = root / SOURCE / name
        if not src.is_dir():
            raise GradingError(f"{src}: no such assignment; choose one of {', '.join(assignments(root))}.")
        shutil.copytree(src, course / SOURCE / name, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        generate(course, name)
    return course


def fill_solutions(root: str | Path, assignment: str, only: set[str] | None = None):
    """The released notebook of `assignment` with its solution cells (all, or the grade ids in `only`)
    filled in from the source, markers removed: what a student who solved them submits."""
    import nbformat  # heavy (seconds on a busy machine): the kernel launcher imports this module too

    root = Path(root)
    source = source_notebook(root, assignment)
    solved = {c.metadata["nbgrader"]["grade_id"]: re.sub(r"\n?[ \t]*### (BEGIN|END) SOLUTION", "", c.source)
              for c in nbformat.read(source, as_version=4).cells if c.metadata.get("nbgrader", {}).get("solution")}
    nb = nbformat.read(root / RELEASE / assignment / source.name, as_version=4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in solved and (only is None or gid in only):
            cell.source = solved[gid]
    return nb
