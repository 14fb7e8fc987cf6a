"""Who submitted a file, read from the names that LMSs, nbgrader, JupyterHub and Colab give it.

`identify(path, ...)` takes a file's path inside a download (folder or zip) and
returns a `Named`: the student's id, stable across assignments, the LMS's id and
display name where the layout carries them, lateness, and an attempt for
choosing the newest of several submissions. A layout is recognised by its
shape, never guessed from a folder's name alone. Layouts, tried in this order:

| layout | example path | student id |
|---|---|---|
| `--id-regex` | anything its `(?P<student>...)` group matches | the group |
| JupyterHub exchange | `inbound/alice+lab5+2026-01-01 12:00:00.000000 UTC+Xy3/nb.ipynb` (`outbound/` is the release: never a student) | `alice` |
| nbgrader | `submitted/<student>/<assignment>/nb.ipynb`, whatever the assignment folder is called | `<student>` |
| Canvas | `smithjohn_LATE_12345_6789012_rank_sweep-1.ipynb` | `canvas-12345` (the user id; the second number is the submission, new each assignment) |
| Moodle | `John Smith_123456_assignsubmission_file_/rank_sweep.ipynb` (folder, or flat with the file name appended) | `moodle-123456` (participant id) |
| D2L / Brightspace | `13394-80551 - Jane Doe - Mar 29, 2018 1205 PM - rank_sweep.ipynb` | the roster's id for that name (`--roster` is required: names are not ids) |
| Gradescope | `assignment_1_export/submission_201000/nb.ipynb` + `submission_metadata.yml` | the submitter's SID, else e-mail, from the metadata |
| Blackboard, nbgrader zip_collect | `Lab1_jdoe_attempt_2026-01-01-12-00-00_rank_sweep.ipynb` | `jdoe` |
| folders | `jupyter-alice/ASSIGNMENT/nb.ipynb`, `alice/nb.ipynb` | `alice` |
| one file each | `alice.ipynb`, `alice_nb.ipynb` | `alice` |

Colab's download names (`Copy of nb.ipynb`, `nb (1).ipynb`) are read as the
notebook itself, `(N)` as the N-th resubmission. Attempts are compared as
numbers and times (`attempt_key`), never as text. A file that is not a
notebook is given to a student only by a layout that names the student
explicitly (an LMS, nbgrader, the exchange), so that a stray `README.txt`
never becomes a student. A name that fits no layout is rejected with the
reason, never guessed.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath

STUDENT_ID = re.compile(r"^\w[\w.@-]{0,63}$")  # letters of any script, digits, . _ - @

CANVAS = re.compile(r"^(?P<name>[^_/]+?)(?P<late>_LATE)?_(?P<uid>\d+)_(?P<sub>\d+)_(?P<file>.+?)(?:-(?P<n>\d+))?"
                    r"(?P<ext>\.[^.]+)?$")
MOODLE = re.compile(r"^(?P<name>.+?)_(?P<pid>\d+)_assignsubmission_(?:file|onlinetext)_(?P<file>.*)$")
ATTEMPT = re.compile(r"^.+?_(?P<student>[\w.@-]+?)_attempt_(?P<ts>\d[\d-]*)(?:_.+)?(?:\.[^.]+)$")
D2L = re.compile(r"^(?P<sub>\d+)-(?P<fid>\d+) - (?P<name>.+?) ?- (?P<date>[A-Z][a-z]{2} \d{1,2}, \d{4} \d{3,4} [AP]M)"
                 r"(?: - (?P<file>.+))?$")
EXCHANGE = re.compile(r"^(?P<student>[^+]+)\+(?P<assignment>[^+]+)\+(?P<ts>[^+]+)(?:\+(?P<random>[^+]*))?$")
GRADESCOPE = re.compile(r"^submission_(?P<sid>\d+)$")
COLAB_COPY = re.compile(r"^(?:Copy of )+", re.I)
COLAB_DUP = re.compile(r"^(?P<stem>.*?)\s*\((?P<n>\d+)\)$")
# Folders that name a step or an assignment, never a student.
NOT_A_STUDENT = {"submitted", "autograded", "feedback", "downloaded", "extracted", "archive", "release",
                 "source", "inbound", "outbound", "home", "submissions"}
# nbgrader's and the exchange's folders of the grader's own copies: never a submission.
GRADER_COPIES = {"autograded": "nbgrader's autograded copies", "feedback": "feedback pages",
                 "release": "the released assignment", "source": "the instructor's source",
                 "outbound": "the exchange's release (outbound/), what students fetch"}
# Files an LMS or an OS adds to a download, never a submission.
LMS_FILES = {"index.html": "D2L's index of the download", "submission_metadata.yml": "Gradescope's list of submitters",
             "thumbs.db": "a Windows thumbnail cache", "desktop.ini": "a Windows folder setting"}


@dataclass
class Named:
    """Who a file belongs to, as far as its path tells; `problem` says why it does not."""

    student: str = ""
    lms_id: str = ""  # Canvas user id or Moodle participant id
    name: str = ""  # display name where the layout gives one
    email: str = ""
    late: bool = False
    timed: bool = False  # the layout says whether this copy was late: its time counts (grading/README.md)
    attempt: str = ""  # larger is newer, compared by `attempt_key` (resubmission number or timestamp)
    layout: str = ""
    folder: str = ""  # nbgrader's assignment folder, where the layout has one
    problem: str = ""
    ignored: str = ""  # why the file is no submission at all (the release, an LMS index, a system file)
    by_name: bool = False  # the layout gives only a display name: the roster must map it to an id


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def attempt_key(attempt: str) -> tuple[int, ...]:
    """'99981' < '100007', '2026-01-02-09-00-00' < '2026-01-10-08-00-00': the numbers in it, compared as numbers."""
    return tuple(int(n) for n in re.findall(r"\d+", attempt or ""))


def notebook_stem(filename: str) -> tuple[str, int]:
    """('rank_sweep', 1) for `Copy of rank_sweep (1).ipynb`: Colab's and browsers' renaming undone."""
    stem = COLAB_COPY.sub("", PurePosixPath(filename).stem).strip()
    m = COLAB_DUP.match(stem)
    return (m["stem"], int(m["n"])) if m else (stem, 0)


def is_notebook(filename: str) -> bool:
    return filename.lower().endswith(".ipynb")


def _same_notebook(filename: str, notebook: str) -> bool:
    return notebook_stem(filename)[0].casefold() == PurePosixPath(notebook).stem.casefold()


def _checked(named: Named, path: str) -> Named:
    named.student = nfc(named.student)
    if not named.problem and not named.by_name and not STUDENT_ID.match(named.student):
        named.problem = (f"cannot tell the student from the name {path!r} (read as {named.student!r}: "
                         "letters, digits, . _ - @, at most 64); rename it <student>.ipynb or pass --id-regex")
    return named


def _d2l_time(text: str) -> str:
    """'Mar 29, 2018 1205 PM' -> '2018-03-29-12-05': sortable as numbers."""
    try:
        return datetime.strptime(text, "%b %d, %Y %I%M %p").strftime("%Y-%m-%d-%H-%M")
    except ValueError:
        return ""


def _exchange_time(text: str) -> str:
    """nbgrader's '2026-01-01 12:00:00.123456 UTC' as digits only, so that `attempt_key` orders it."""
    return "-".join(re.findall(r"\d+", text))


def _gradescope(part: str, path: str, meta: dict | None) -> Named:
    layout = "Gradescope"
    if meta is None:
        return Named(layout=layout, problem=(
            f"{path!r} is from a Gradescope export, whose folders ({part}) are submission numbers, not students; "
            "the export's submission_metadata.yml says who submitted each, and it was not found: pass the whole "
            "export (the zip or folder as downloaded), or --id-regex"))
    entry = meta.get(part)
    if not isinstance(entry, dict):
        return Named(layout=layout, problem=f"{path!r}: Gradescope's submission_metadata.yml has no entry {part!r}; "
                                            "download the export again")
    people = entry.get(":submitters") or entry.get("submitters") or []
    people = [p for p in people if isinstance(p, dict)]
    if len(people) != 1:
        names = ", ".join(str(p.get(":name") or p.get("name")) for p in people) or "nobody"
        return Named(layout=layout, problem=(
            f"{path!r}: a Gradescope group submission ({names}); give each member their own file "
            "(--id-regex) or grade it by hand"))
    who = people[0]
    sid = str(who.get(":sid") or who.get("sid") or "").strip()
    email = str(who.get(":email") or who.get("email") or "").strip()
    created = entry.get(":created_at") or entry.get("created_at") or ""
    stamp = created.isoformat() if hasattr(created, "isoformat") else str(created)
    late = entry.get(":late") or entry.get("late")
    student = sid if STUDENT_ID.match(sid) else email
    return _checked(Named(student=student, lms_id=sid, name=str(who.get(":name") or who.get("name") or ""),
                          email=email, attempt=_exchange_time(stamp), layout=layout, late=bool(late),
                          timed=late is not None), path)


def identify(path: str, notebook: str, assignment: str = "", id_regex: re.Pattern | None = None,
             gradescope: dict | None = None) -> Named:
    """Who submitted the file at `path` (a path inside a download, '/'-separated).

    `gradescope`: the `submission_metadata.yml` of a Gradescope export in the same download, if any."""
    path = nfc(path)
    parts = PurePosixPath(path).parts
    if path.startswith("/") or ".." in parts or "\\" in path:
        return Named(problem=f"the name {path!r} points outside its folder or archive (absolute, '..' or '\\'); "
                             "such a file is never read")
    filename = parts[-1]
    notebook_file = is_notebook(filename)
    for part in parts:
        if part == "__MACOSX" or part.startswith("."):
            return Named(ignored=f"a hidden or system file ({part}), not a submission")
    if filename.lower() in LMS_FILES and not notebook_file:
        return Named(ignored=LMS_FILES[filename.lower()])

    if id_regex is not None:
        m = id_regex.search(path)
        if not m or not m.groupdict().get("student"):
            return Named(layout="id-regex", problem=f"cannot tell the student from the name {path!r}: "
                                                    f"--id-regex {id_regex.pattern!r} does not match it")
        late = m.groupdict().get("late")
        return _checked(Named(student=m["student"], late=bool(late), timed="late" in id_regex.groupindex,
                              attempt=m.groupdict().get("attempt") or "", layout="id-regex"), path)

    # JupyterHub exchange: inbound/<student>+<assignment>+<time>[+<random>]/...; outbound/ is the release.
    if "inbound" in parts[:-1]:
        i = parts.index("inbound")
        m = EXCHANGE.match(parts[i + 1]) if i + 2 < len(parts) else None
        if not m:
            return Named(layout="JupyterHub exchange", problem=(
                f"{path!r} is in the exchange's inbound/ but not in a <student>+<assignment>+<time> folder; "
                "pass the exchange's inbound/ folder as nbgrader wrote it"))
        if assignment and m["assignment"] != assignment:
            return Named(student=m["student"], ignored=f"submitted for {m['assignment']!r}, not {assignment!r}")
        return _checked(Named(student=m["student"], attempt=_exchange_time(m["ts"]), layout="JupyterHub exchange"),
                        path)
    for part in parts[:-1]:
        if part.casefold() in GRADER_COPIES and "submitted" not in parts:
            return Named(ignored=f"{GRADER_COPIES[part.casefold()]}, not a submission")

    m = CANVAS.match(filename)
    if m and (notebook_file or m["ext"]):
        return _checked(Named(student=f"canvas-{m['uid']}", lms_id=m["uid"], name=m["name"], late=bool(m["late"]),
                              timed=True, attempt=f"{int(m['n'] or 0):06d}", layout="Canvas"), path)
    for part in parts:
        m = MOODLE.match(part)
        if m:
            return _checked(Named(student=f"moodle-{m['pid']}", lms_id=m["pid"], name=m["name"].strip(),
                                  layout="Moodle"), path)
    for part in parts:
        m = D2L.match(part)
        if m:
            when = _d2l_time(m["date"])
            return _checked(Named(name=m["name"].strip(), attempt=f"{when}-{m['sub']}", layout="D2L",
                                  by_name=True), path)
    for part in parts[:-1]:
        if GRADESCOPE.match(part):
            return _gradescope(part, path, gradescope)
    # nbgrader's submitted/<student>/<assignment>/<file>: recognised by its shape, whatever the folder is called.
    if "submitted" in parts[:-1]:
        i = len(parts) - 1 - parts[::-1].index("submitted")
        rest = parts[i + 1:]
        if len(rest) >= 2:
            folder = rest[1] if len(rest) >= 3 else ""
            layout = "nbgrader submitted"
            if folder and assignment and folder != assignment:
                layout += f" (assignment folder {folder!r}, not {assignment!r})"
            if notebook_file and not _same_notebook(filename, notebook):
                layout += f" (file named {filename!r}, not {notebook!r})"
            return _checked(Named(student=rest[0], attempt=f"{notebook_stem(filename)[1]:06d}", layout=layout,
                                  folder=folder), path)

    m = ATTEMPT.match(filename)
    if m:
        return _checked(Named(student=m["student"], attempt=m["ts"], layout="nbgrader zip_collect or Blackboard"), path)

    if not notebook_file:  # a stray file in a folder layout names no one
        return Named(problem=f"{path!r} is not a notebook, and its name names no student")
    stem, copy = notebook_stem(filename)
    folders = [p for p in parts[:-1] if p.casefold() not in NOT_A_STUDENT
               and p not in (assignment, PurePosixPath(notebook).stem)]
    if folders:  # the nearest folder that is not a step or the assignment: jupyter-alice/ASSIGNMENT/nb.ipynb
        student = folders[-1].removeprefix("jupyter-")  # JupyterHub (TLJH) users' home folders
        layout = "folder per student"
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
