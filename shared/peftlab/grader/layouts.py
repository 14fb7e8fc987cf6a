"""Who submitted a file, read from the names that LMSs, nbgrader, JupyterHub and Colab give it.

`identify(path, ...)` takes a notebook's path inside a download (folder or zip)
and returns a `Named`: the student's id, stable across assignments, the LMS's id
and display name where the layout carries them, lateness, and an attempt number
for choosing the newest of several submissions. Layouts, tried in this order:

| layout | example path | student id |
|---|---|---|
| `--id-regex` | anything its `(?P<student>...)` group matches | the group |
| Canvas | `smithjohn_LATE_12345_6789012_rank_sweep-1.ipynb` | `canvas-12345` (the user id; the second number is the submission, new each assignment) |
| Moodle | `John Smith_123456_assignsubmission_file_/rank_sweep.ipynb` (folder, or flat with the file name appended) | `moodle-123456` (participant id) |
| nbgrader zip_collect | `Lab1_jdoe_attempt_2026-01-01-12-00-00_rank_sweep.ipynb` | `jdoe` |
| folders | `submitted/alice/ASSIGNMENT/nb.ipynb`, `jupyter-alice/ASSIGNMENT/nb.ipynb`, `alice/nb.ipynb` | `alice` |
| one file each | `alice.ipynb`, `alice_nb.ipynb` | `alice` |

Colab's download names (`Copy of nb.ipynb`, `nb (1).ipynb`) are read as the
notebook itself, `(N)` as the N-th resubmission. A name that fits no layout is
rejected with the reason, never guessed.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import PurePosixPath

STUDENT_ID = re.compile(r"^\w[\w.@-]{0,63}$")  # letters of any script, digits, . _ - @

CANVAS = re.compile(r"^(?P<name>[^_/]+?)(?P<late>_LATE)?_(?P<uid>\d+)_(?P<sub>\d+)_(?P<file>.+?)(?:-(?P<n>\d+))?\.ipynb$")
MOODLE = re.compile(r"^(?P<name>.+?)_(?P<pid>\d+)_assignsubmission_(?:file|onlinetext)_(?P<file>.*)$")
ATTEMPT = re.compile(r"^.+?_(?P<student>[\w.@-]+?)_attempt_(?P<ts>\d[\d-]*)(?:_.+)?\.ipynb$")
COLAB_COPY = re.compile(r"^(?:Copy of )+", re.I)
COLAB_DUP = re.compile(r"^(?P<stem>.*?)\s*\((?P<n>\d+)\)$")
# Folders that name a step or an assignment, never a student.
NOT_A_STUDENT = {"submitted", "autograded", "feedback", "downloaded", "extracted", "archive", "release",
                 "source", "inbound", "outbound", "home", "submissions"}


@dataclass
class Named:
    """Who a file belongs to, as far as its name tells; `problem` says why it does not."""

    student: str = ""
    lms_id: str = ""  # Canvas user id or Moodle participant id
    name: str = ""  # display name where the layout gives one
    late: bool = False
    attempt: str = ""  # sortable: larger is newer (resubmission number or timestamp)
    layout: str = ""
    problem: str = ""


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def notebook_stem(filename: str) -> tuple[str, int]:
    """('rank_sweep', 1) for `Copy of rank_sweep (1).ipynb`: Colab's and browsers' renaming undone."""
    stem = COLAB_COPY.sub("", PurePosixPath(filename).stem).strip()
    m = COLAB_DUP.match(stem)
    return (m["stem"], int(m["n"])) if m else (stem, 0)


def _same_notebook(filename: str, notebook: str) -> bool:
    return notebook_stem(filename)[0].casefold() == PurePosixPath(notebook).stem.casefold()


def _checked(named: Named, path: str) -> Named:
    named.student = nfc(named.student)
    if not named.problem and not STUDENT_ID.match(named.student):
        named.problem = (f"cannot tell the student from the name {path!r} (read as {named.student!r}: "
                         "letters, digits, . _ - @, at most 64); rename it <student>.ipynb or pass --id-regex")
    return named


def identify(path: str, notebook: str, assignment: str = "", id_regex: re.Pattern | None = None) -> Named:
    """Who submitted the file at `path` (a path inside a download, '/'-separated)."""
    path = nfc(path)
    parts = PurePosixPath(path).parts
    if path.startswith("/") or ".." in parts or "\\" in path:
        return Named(problem=f"the name {path!r} points outside its folder or archive (absolute, '..' or '\\'); "
                             "such a file is never read")
    filename = parts[-1]
    if id_regex is not None:
        m = id_regex.search(path)
        if not m or not m.groupdict().get("student"):
            return Named(layout="id-regex", problem=f"cannot tell the student from the name {path!r}: "
                                                    f"--id-regex {id_regex.pattern!r} does not match it")
        late = bool(m.groupdict().get("late"))
        return _checked(Named(student=m["student"], late=late, attempt=m.groupdict().get("attempt") or "",
                              layout="id-regex"), path)

    m = CANVAS.match(filename)
    if m:
        return _checked(Named(student=f"canvas-{m['uid']}", lms_id=m["uid"], name=m["name"],
                              late=bool(m["late"]), attempt=f"{int(m['n'] or 0):06d}", layout="Canvas"), path)
    for i, part in enumerate(parts):
        m = MOODLE.match(part)
        if m:
            if i == len(parts) - 1 and not m["file"].endswith(".ipynb"):
                break
            return _checked(Named(student=f"moodle-{m['pid']}", lms_id=m["pid"], name=m["name"].strip(),
                                  layout="Moodle"), path)
    m = ATTEMPT.match(filename)
    if m:
        return _checked(Named(student=m["student"], attempt=m["ts"], layout="nbgrader zip_collect"), path)

    stem, copy = notebook_stem(filename)
    folders = [p for p in parts[:-1] if p.casefold() not in NOT_A_STUDENT
               and p not in (assignment, PurePosixPath(notebook).stem)]
    if folders:  # the nearest folder that is not a step or the assignment: submitted/alice/ASSIGNMENT/nb.ipynb
        student = folders[-1].removeprefix("jupyter-")  # JupyterHub (TLJH) users' home folders
        layout = "nbgrader submitted" if "submitted" in parts[:-1] else "folder per student"
        if not _same_notebook(filename, notebook):
            layout += f" (file named {filename!r}, not {notebook!r})"
        return _checked(Named(student=student, attempt=f"{copy:06d}", layout=layout), path)
    if _same_notebook(filename, notebook):
        return Named(layout="one file", problem=(
            f"cannot tell the student from the name {path!r}: it is the assignment's own file name; put it in a "
            f"folder named after the student, or rename it <student>.ipynb"))
    for suffix in (f"_{PurePosixPath(notebook).stem}", f"-{PurePosixPath(notebook).stem}"):
        if stem.endswith(suffix) and len(stem) > len(suffix):
            stem = stem[: -len(suffix)]  # alice_rank_sweep.ipynb
    return _checked(Named(student=stem, attempt=f"{copy:06d}", layout="one file"), path)
