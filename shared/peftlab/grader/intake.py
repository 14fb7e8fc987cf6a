"""Import a class's submissions: folders, zip files or single notebooks, named by student.

Only regular files are read. A symbolic link, a hard link (a second name for a
file elsewhere, such as the course's solution) or a special file in a
submission is rejected with a reason, never followed: a student's archive can
hold a link to any file on the grader's machine.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..files import write_atomic
from .course import GradingError
from .layouts import Named, identify
from .roster import Roster, Student
from .settings import Settings

MAX_DEPTH = 4  # folder levels searched below a source


@dataclass
class Submission:
    student: str
    origin: str  # where it came from, for messages
    path: str = ""  # staged copy
    sha256: str = ""
    status: str = ""
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    # Who, as the download's layout (peftlab.grader.layouts) and the roster tell it.
    lms_id: str = ""
    name: str = ""
    email: str = ""
    late: bool = False
    layout: str = ""
    rejected: bool = False  # no student could be given this file: reported, never graded or recorded


@dataclass
class _Found:
    name: str  # path inside the source, for the student's name
    origin: str
    data: bytes | None = None
    problem: str = ""
    whole: bool = False  # the problem is the source itself (a corrupt zip), not one student's file


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "a special file (device, pipe or socket)"


def read_regular(path: Path, limit: int) -> tuple[bytes | None, str]:
    """(data, '') for a regular file of at most `limit` bytes with one name, else (None, why not)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if os.path.islink(path):
            return None, f"is a symbolic link to {os.readlink(path)!r}; submit the notebook file itself"
        return None, f"cannot be read ({exc.strerror})"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, f"is {_kind(st.st_mode)}, not a notebook file"
        if st.st_nlink > 1:
            return None, (f"is a hard link ({st.st_nlink} names for one file), which could point at another "
                          "person's file; submit a copy of the notebook")
        if st.st_size > limit:
            return None, f"is too large ({st.st_size:,} bytes; limit {limit:,})"
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            return None, f"is too large (more than {limit:,} bytes)"
        return data, ""
    finally:
        os.close(fd)


def _walk_folder(source: Path, limit: int) -> list[_Found]:
    """Notebooks in `source` and up to MAX_DEPTH folders down, without following any link."""
    found = []

    def visit(folder: Path, rel: str, depth: int) -> None:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            name = f"{rel}{entry.name}"
            if entry.name in (".ipynb_checkpoints", "__MACOSX") or entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                if depth < MAX_DEPTH:  # submitted/<student>/<assignment>/<notebook>.ipynb is three down
                    visit(Path(entry.path), name + "/", depth + 1)
                continue
            if not entry.name.endswith(".ipynb") and not entry.is_symlink():
                continue
            if entry.is_symlink() and not entry.name.endswith(".ipynb"):
                # a link that poses as a student's folder
                found.append(_Found(name, entry.path, None, f"is a symbolic link to {os.readlink(entry.path)!r}; "
                                                             "submit the notebook file itself"))
                continue
            data, problem = read_regular(Path(entry.path), limit)
            found.append(_Found(name, entry.path, data, problem))

    visit(source, "", 0)
    return found


def _walk_zip(source: Path, limit: int) -> list[_Found]:
    found = []
    try:
        with zipfile.ZipFile(source) as zf:
            for info in zf.infolist():
                hidden = any(p.startswith(".") and p != ".." for p in info.filename.split("/"))  # '..' is reported
                if info.is_dir() or "__MACOSX" in info.filename or hidden:
                    continue
                origin = f"{source}:{info.filename}"
                mode = info.external_attr >> 16 if info.create_system == 3 else 0  # Unix mode bits, if any
                if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                    if info.filename.endswith(".ipynb") or stat.S_ISLNK(mode):
                        found.append(_Found(info.filename, origin, None,
                                            f"is stored in the archive as {_kind(mode)}, not a notebook file; "
                                            "zip the notebook itself (zip -y keeps links, leave it out)"))
                    continue
                if not info.filename.endswith(".ipynb"):
                    continue
                if info.file_size > limit:
                    found.append(_Found(info.filename, origin, None, f"is too large ({info.file_size:,} bytes; "
                                                                     f"limit {limit:,})"))
                    continue
                with zf.open(info) as fh:  # read at most the limit: a zip bomb cannot lie past it
                    data = fh.read(limit + 1)
                problem = f"is too large (more than {limit:,} bytes)" if len(data) > limit else ""
                found.append(_Found(info.filename, origin, None if problem else data, problem))
    except (zipfile.BadZipFile, OSError, NotImplementedError, EOFError, zipfile.LargeZipFile) as exc:
        # One broken download must not stop the class: the archive itself is reported as rejected.
        return [_Found(source.name, str(source), None, f"is not a readable zip file ({exc}); download it again",
                       whole=True)]
    return found


def import_submissions(sources: list[str | Path], notebook: str, staging: Path, settings: Settings | None = None,
                       *, assignment: str = "", roster: Roster | None = None,
                       id_regex: re.Pattern | None = None) -> list[Submission]:
    """Stage the newest notebook of each student found in folders / zip files / single files.

    Students are named by the download's layout (`layouts.identify`) and, given a roster, mapped to its
    ids. A student's unreadable notebook is theirs, with status `invalid` and the reason. A file that no
    student can be given (unknown name, not on the roster, older or ambiguous copy, corrupt zip) comes back
    with `rejected=True` and the reason, and is never graded or recorded."""
    limit = (settings or Settings()).max_notebook_bytes
    staging.mkdir(parents=True, exist_ok=True)
    found: list[_Found] = []
    for source in map(Path, sources):
        if source.is_dir() and not source.is_symlink():
            found += _walk_folder(source, limit)
        elif source.suffix.lower() == ".zip" and source.is_file():
            found += _walk_zip(source, limit)
        elif source.suffix == ".ipynb" and (source.is_file() or source.is_symlink()):
            data, problem = read_regular(source, limit)
            found.append(_Found(source.name, str(source), data, problem))
        else:
            raise GradingError(f"{source}: not a folder, a .zip or an .ipynb file.")

    rejected: list[Submission] = []

    def reject(item: _Found, reason: str) -> None:
        tag = hashlib.sha256(item.origin.encode()).hexdigest()
        rejected.append(Submission(student="rejected-" + tag[:8], origin=item.origin, sha256=tag, status="invalid",
                                   reason=f"{item.origin}: {reason}", rejected=True))

    by_student: dict[str, list[tuple[_Found, Named, Student | None]]] = {}
    for item in found:
        if item.whole:
            reject(item, item.problem)
            continue
        named = identify(item.name, notebook, assignment, id_regex)
        if named.problem:
            reject(item, named.problem)
            continue
        person = None
        if roster is not None:
            person, why = roster.match(named)
            if person is None:
                reject(item, why)
                continue
            named.student = person.id
        by_student.setdefault(named.student, []).append((item, named, person))

    out: list[Submission] = []
    for student, group in by_student.items():
        group.sort(key=lambda g: g[1].attempt)
        item, named, person = group[-1]
        newest = [g for g in group if g[1].attempt == named.attempt]
        digests = {g[0].data and hashlib.sha256(g[0].data).hexdigest() for g in newest}
        sub = Submission(student=student, origin=item.origin, lms_id=named.lms_id, late=named.late,
                         layout=named.layout, name=person.name if person and person.name else named.name,
                         email=person.email if person else "")
        for older, n, _ in group[:-1]:
            if n.attempt != named.attempt:
                reject(older, f"an older submission of {student}; the newest, {item.origin}, is graded")
            elif len(digests) == 1:
                reject(older, f"a second submission for {student}, identical to {item.origin}; ignored")
        if len(digests) > 1:
            sub.status, sub.reason = "invalid", (
                f"{len(newest)} different submissions for {student} and nothing tells which is newer: "
                + ", ".join(g[0].origin for g in newest) + "; keep one and run again")
            out.append(sub)
            continue
        if named.late:
            sub.notes.append(f"submitted late ({named.layout} marks it late)")
        if item.problem:
            sub.status, sub.reason = "invalid", f"{item.origin} {item.problem}"
            sub.sha256 = hashlib.sha256(item.origin.encode()).hexdigest()
        else:
            sub.sha256 = hashlib.sha256(item.data).hexdigest()
            sub.path = str(staging / f"{student}.ipynb")
            write_atomic(Path(sub.path), item.data)
        out.append(sub)
    return [*sorted(out, key=lambda s: s.student), *rejected]

