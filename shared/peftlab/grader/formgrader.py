"""nbgrader's formgrader, for grading written answers by hand, set up so that it cannot grade around the sandbox.

`make formgrader` starts Jupyter Lab in `grading/` (where nbgrader finds the
course's `nbgrader_config.py`) with `ServerApp.root_dir` at the course root, so
that formgrader's links (`/tree/solutions/...`) resolve. Started anywhere else,
the console says so (`warn_if_misplaced`), instead of a line in the server log.

Formgrader's own Autograde and Generate Feedback buttons would run student code
without the sandbox, canaries or injected parameters, and nbgrader's feedback
shows hidden tests. `grading/nbgrader_config.py` replaces what they run with
`Refuse`, which stops them with a message pointing at `peftlab-grade`.

On a course with no gradebook, nbgrader makes one on formgrader's first page
and runs the `alembic` command to stamp it: with the venv's `jupyter` started
by path (as the Makefile does) `alembic` is not on PATH, the page fails with a
500 and the gradebook is left without its `alembic_version` table. So `make
formgrader` first runs `python -m peftlab.grader.formgrader`, which makes (or
repairs) the gradebook with this interpreter's tools on PATH, and
`grading/nbgrader_config.py` puts them on the server's PATH too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from nbconvert.preprocessors import Preprocessor
from traitlets import Bool

REFUSAL = ("PEFT Lab: nbgrader's own {what} is switched off for this course (grading/nbgrader_config.py): it would "
           "run student code without the sandbox and {why}. Grade with `make grade ASSIGNMENT=... SUBMISSIONS=...` "
           "(peftlab-grade); formgrader is for the written answers.")


class Refuse(Preprocessor):
    """Stands in for nbgrader's autograde and feedback steps: fails with the reason and the command to use."""

    enabled = Bool(True)  # nbconvert skips a preprocessor that is not enabled
    what = "autograde"
    why = "trust test results the student's kernel reports"

    def preprocess(self, nb, resources):
        raise RuntimeError(REFUSAL.format(what=self.what, why=self.why))


class RefuseFeedback(Refuse):
    what = "Generate Feedback"
    why = "show the hidden tests' code to students"


def prepare_gradebook(work: Path) -> str:
    """Make the gradebook in `work` as nbgrader would, or stamp one that a failed first start left without
    its alembic version; what was done, in words."""
    import sqlite3

    from .course import tools_on_path
    from .gradebook import open_gradebook

    tools_on_path()
    work.mkdir(parents=True, exist_ok=True)
    db = work / "gradebook.db"
    existed = db.is_file() and db.stat().st_size > 0
    if existed:
        with sqlite3.connect(db) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "alembic_version" not in tables:
            from nbgrader.api import get_alembic_version

            version = get_alembic_version()
            with sqlite3.connect(db) as con:
                con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
                con.execute("INSERT INTO alembic_version (version_num) VALUES (?)", (version,))
            return f"{db}: stamped with nbgrader's schema version {version} (a failed first start had left it out)"
    with open_gradebook(work):
        pass
    return f"{db}: ready" if existed else f"{db}: created"


def main(argv: list[str] | None = None) -> int:
    """`python -m peftlab.grader.formgrader [COURSE]`: the course's gradebook ready before formgrader starts."""
    from .course import GradingError, course_root

    argv = sys.argv[1:] if argv is None else argv
    try:
        root = course_root(argv[0] if argv else None)
        print(prepare_gradebook(root / "grading" / "work"))
    except (GradingError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _server_root(argv: list[str]) -> Path:
    for i, arg in enumerate(argv):
        for flag in ("--ServerApp.root_dir", "--notebook-dir", "--ServerApp.notebook_dir"):
            if arg.startswith(flag + "="):
                return Path(arg.split("=", 1)[1]).expanduser().resolve()
            if arg == flag and i + 1 < len(argv):
                return Path(argv[i + 1]).expanduser().resolve()
    return Path.cwd().resolve()


def misplaced(course: Path, argv: list[str] | None = None) -> str:
    """Why a Jupyter server started with `argv` shows formgrader wrong, or '' when it is set up right."""
    argv = sys.argv if argv is None else argv
    course = course.resolve()
    if not argv or "jupyter" not in Path(argv[0]).name:  # nbgrader's own commands read this file too
        return ""
    if Path.cwd().resolve() != course / "grading":
        return (f"formgrader needs to start in {course / 'grading'} (where nbgrader_config.py is); here it shows an "
                "empty course")
    root = _server_root(argv)
    if root != course:
        return (f"the server's root_dir is {root}, not the course root {course}: formgrader's Edit and Preview "
                "links (/tree/../solutions/...) give 404")
    return ""


def warn_if_misplaced(course: Path, argv: list[str] | None = None) -> str:
    """Print `misplaced`'s reason on the console, with the command that starts formgrader right."""
    why = misplaced(course, argv)
    if why and not os.environ.get("PEFTLAB_QUIET_FORMGRADER"):
        print(f"\n*** PEFT Lab, for instructors: {why}.\n*** To grade by hand in formgrader, stop this server and "
              f"run `make formgrader` in {course.resolve()}.\n",
              file=sys.stderr, flush=True)
    return why


if __name__ == "__main__":
    raise SystemExit(main())
