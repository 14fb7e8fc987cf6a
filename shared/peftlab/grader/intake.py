"""Import a class's submissions: folders, zip files or single notebooks, named by student.

Every file found ends in exactly one row of the intake report (`rows`), with
its fate (`FATES`) and the reason: no file is dropped without a word, and no
student is invented (a file that names no one is reported, never guessed).

Only regular files are read. A symbolic link, a hard link (a second name for a
file elsewhere, such as the course's solution) or a special file in a
submission is rejected with a reason, never followed: a student's archive can
hold a link to any file on the grader's machine. Files are streamed: a zip of
sixty 19 MiB notebooks is read a chunk at a time, never held in memory.

Zip names without the UTF-8 flag are read by the zip rules: the Info-ZIP
Unicode Path field when present, else UTF-8 when the bytes are valid UTF-8,
else code page 437 (the format's default). A name read as code page 437 that
is not plain ASCII was probably written in some other encoding (Latin-1, a
Windows code page), so it never names a student: such a file counts only
where the layout carries an LMS id (Canvas, Moodle), and is reported otherwise.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .course import GradingError
from .layouts import Named, attempt_key, identify, is_notebook
from .roster import Roster, Student
from .settings import Settings

MAX_DEPTH = 5  # folder levels searched below a source (exchange/course/inbound/<submission>/nb.ipynb is four)
CHUNK = 1 << 20  # bytes read at a time

# The fate of each file found, as the intake report and the console name it. A student's own file takes the
# student's final status instead (graded, invalid, tampered, timeout, ...: peftlab.grader.outcome).
FATES = {
    "graded": "the student's notebook, graded",
    "invalid": "the student's file, not gradable (see the reason)",
    "superseded": "an older attempt: the student's newest is graded",
    "duplicate": "an identical copy of the file graded for the student",
    "not-a-notebook": "not a .ipynb file (an upload of another kind, or a stray file)",
    "unknown-student": "no student could be given the file (see the reason)",
    "ignored": "not a submission: the release, an LMS's index, a system file, another assignment",
}


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
    canvas_id: str = ""  # Canvas user id, from a Canvas download or the roster
    moodle_id: str = ""  # Moodle participant id, from a Moodle download or the roster
    sis_id: str = ""  # the institution's (SIS) id, from the roster only
    rejected: bool = False  # a file that is no student's submission: reported, never graded or recorded
    owner: str = ""  # for a rejected file: the student it belongs to, if any
    fate: str = ""  # for a rejected file: one of FATES; for a student's file, set only when not the status


@dataclass
class _Found:
    name: str  # path inside the source, for the student's name
    origin: str
    open: Callable[[], BinaryIO] | None = None  # streams the file's bytes
    problem: str = ""
    whole: bool = False  # the problem is the source itself (a corrupt zip), not one student's file
    ignored: str = ""  # not looked at: a hidden folder, a folder too deep
    undecodable: bytes = b""  # a zip name whose encoding is unknown (read as cp437)
    sha256: str | None = None  # filled by `_digest`


def printable(text: str) -> str:
    """A path as text that can be printed and written as UTF-8 (undecodable bytes shown as \\xNN)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "a special file (device, pipe or socket)"


def _open_regular(path: Path, limit: int) -> BinaryIO:
    """The file at `path`, opened for reading if it is a regular file of one name and at most `limit` bytes;
    else ValueError with the reason. Checked on the open descriptor: a file swapped for a link is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if os.path.islink(path):
            raise ValueError(f"is a symbolic link to {os.readlink(path)!r}; submit the notebook file itself") from None
        raise ValueError(f"cannot be read ({exc.strerror})") from None
    st = os.fstat(fd)
    why = ""
    if not stat.S_ISREG(st.st_mode):
        why = f"is {_kind(st.st_mode)}, not a notebook file"
    elif st.st_nlink > 1:
        why = (f"is a hard link ({st.st_nlink} names for one file), which could point at another person's file; "
               "submit a copy of the notebook")
    elif st.st_size > limit:
        why = f"is too large ({st.st_size:,} bytes; limit {limit:,})"
    if why:
        os.close(fd)
        raise ValueError(why)
    return os.fdopen(fd, "rb")


def _regular_problem(path: Path, limit: int) -> str:
    try:
        _open_regular(path, limit).close()
    except ValueError as exc:
        return str(exc)
    return ""


def _walk_folder(source: Path, limit: int) -> list[_Found]:
    """Every file in `source` and up to MAX_DEPTH folders down, without following any link.

    Hidden folders (.git, .ipynb_checkpoints) and folders too deep are one row each, not searched."""
    found = []

    def visit(folder: Path, rel: str, depth: int) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            found.append(_Found(rel or source.name, str(folder), problem=f"cannot be listed ({exc.strerror})",
                                whole=True))
            return
        for entry in entries:
            name = printable(f"{rel}{entry.name}")  # a name in no encoding never becomes a student's
            origin = printable(entry.path)
            if entry.is_dir(follow_symlinks=False):
                if entry.name.startswith(".") or entry.name == "__MACOSX":
                    found.append(_Found(name, origin + "/", ignored=f"a hidden or system folder ({entry.name}), "
                                                                   "not searched"))
                elif depth >= MAX_DEPTH:
                    found.append(_Found(name, origin + "/", ignored=f"a folder more than {MAX_DEPTH} levels below "
                                                                   f"{source}, not searched; pass it on its own"))
                else:
                    visit(Path(entry.path), name + "/", depth + 1)
                continue
            path = Path(entry.path)
            found.append(_Found(name, origin, (lambda p=path: _open_regular(p, limit)),
                                _regular_problem(path, limit)))

    visit(source, "", 0)
    return found


def _unicode_path(info: zipfile.ZipInfo, raw: bytes) -> str | None:
    """The Info-ZIP Unicode Path extra field (0x7075), if present and made for this very name."""
    extra = info.extra
    while len(extra) >= 4:
        tag, size = struct.unpack("<HH", extra[:4])
        body, extra = extra[4:4 + size], extra[4 + size:]
        if tag == 0x7075 and len(body) >= 5 and body[0] == 1:
            if struct.unpack("<L", body[1:5])[0] == zlib.crc32(raw):
                try:
                    return body[5:].decode("utf-8")
                except UnicodeDecodeError:
                    return None
    return None


def zip_name(info: zipfile.ZipInfo) -> tuple[str, bytes]:
    """(the entry's name, b'' or the raw bytes of a name whose encoding is unknown), by the zip rules."""
    if info.flag_bits & 0x800 or info.orig_filename.isascii():
        return info.orig_filename, b""
    raw = info.orig_filename.encode("cp437")  # zipfile decoded the stored bytes as cp437: undo it
    named = _unicode_path(info, raw)
    if named is not None:
        return named, b""
    try:
        return raw.decode("utf-8"), b""  # most tools write UTF-8 and forget the flag
    except UnicodeDecodeError:
        return info.orig_filename, raw


def _walk_zip(source: Path, limit: int, stack: ExitStack) -> list[_Found]:
    found = []
    try:
        zf = stack.enter_context(zipfile.ZipFile(source))
        for info in zf.infolist():
            if info.is_dir():
                continue
            name, raw = zip_name(info)
            origin = f"{source}:{name}"
            mode = info.external_attr >> 16 if info.create_system == 3 else 0  # Unix mode bits, if any
            problem = ""
            if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                problem = (f"is stored in the archive as {_kind(mode)}, not a regular file; "
                           "zip the notebook itself (zip -y keeps links, leave it out)")
            elif info.file_size > limit:
                problem = f"is too large ({info.file_size:,} bytes; limit {limit:,})"
            found.append(_Found(name, origin, (lambda i=info: zf.open(i)), problem, undecodable=raw))
    except (zipfile.BadZipFile, OSError, NotImplementedError, EOFError, zipfile.LargeZipFile, ValueError) as exc:
        # One broken download must not stop the class: the archive itself is reported.
        return [_Found(source.name, str(source), problem=f"is not a readable zip file ({exc}); download it again",
                       whole=True)]
    if not found:
        return [_Found(source.name, str(source), ignored="an empty archive: no file in it")]
    return found


def _stream(item: _Found, limit: int, dest: Path | None = None) -> str:
    """SHA-256 of the file, read a chunk at a time (at most `limit` bytes), copied to `dest` if given.
    Sets `item.problem` (and returns '') when it cannot be read; never holds the whole file."""
    digest = hashlib.sha256()
    tmp = dest and dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    out = None
    try:
        with item.open() as fh:
            if tmp is not None:
                tmp.parent.mkdir(parents=True, exist_ok=True)
                if os.path.lexists(tmp):
                    os.unlink(tmp)
                out = os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), "wb")
            size = 0
            while chunk := fh.read(CHUNK):
                size += len(chunk)
                if size > limit:  # a zip bomb, or a file grown since it was listed, cannot lie past the limit
                    raise ValueError(f"is too large (more than {limit:,} bytes)")
                digest.update(chunk)
                if out is not None:
                    out.write(chunk)
        if out is not None:
            out.close()
            out = None
            os.replace(tmp, dest)
        return digest.hexdigest()
    except ValueError as exc:
        item.problem = str(exc)
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as exc:
        item.problem = f"cannot be read ({type(exc).__name__}: {exc}); download it again"
    finally:
        if out is not None:
            out.close()
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)
    return ""


def _digest(item: _Found, limit: int) -> str | None:
    if item.sha256 is None:
        item.sha256 = "" if item.problem else _stream(item, limit)
    return item.sha256 or None


def _gradescope_metadata(found: list[_Found], limit: int) -> dict | None:
    """Gradescope's submission_metadata.yml files in the download, merged: {'submission_N': entry}."""
    import yaml

    merged = None
    for item in found:
        if Path(item.name).name != "submission_metadata.yml" or item.problem or item.open is None:
            continue
        try:
            with item.open() as fh:
                data = yaml.safe_load(fh.read(limit + 1))
        except Exception as exc:  # noqa: BLE001 (YAML nested too deep, a broken zip: one file, never the class)
            item.ignored = f"Gradescope's list of submitters, unreadable ({type(exc).__name__}); download it again"
            continue
        if isinstance(data, dict):
            merged = {**(merged or {}), **{str(k): v for k, v in data.items()}}
            item.ignored = f"Gradescope's list of submitters ({len(data)} submissions), read"
    return merged


def find(sources: list[str | Path], limit: int, stack: ExitStack) -> list[_Found]:
    """Every file of the sources (folders, zip files, single notebooks)."""
    found: list[_Found] = []
    for source in map(Path, sources):
        if source.is_dir() and not source.is_symlink():
            found += _walk_folder(source, limit)
        elif source.suffix.lower() == ".zip" and source.is_file():
            found += _walk_zip(source, limit, stack)
        elif source.suffix == ".ipynb" and (source.is_file() or source.is_symlink()):
            found.append(_Found(source.name, str(source), (lambda p=source: _open_regular(p, limit)),
                                _regular_problem(source, limit)))
        elif not source.exists():
            raise GradingError(f"{source}: no such file or folder; check the path of the download.")
        else:
            raise GradingError(f"{source}: not a folder, a .zip or an .ipynb file; pass the download as the LMS "
                               "gave it (a zip or an unzipped folder).")
    return found


def import_submissions(sources: list[str | Path], notebook: str, staging: Path, settings: Settings | None = None,
                       *, assignment: str = "", roster: Roster | None = None,
                       id_regex: re.Pattern | None = None) -> list[Submission]:
    """Stage the newest notebook of each student found in folders / zip files / single files.

    Students are named by the download's layout (`layouts.identify`) and, given a roster, mapped to its
    ids. A student's unreadable notebook is theirs, with status `invalid` and the reason; so is a student
    who uploaded only files that are not notebooks. Every other file comes back with `rejected=True`, its
    fate (`FATES`) and the reason, and is never graded or recorded."""
    limit = (settings or Settings()).max_notebook_bytes
    staging.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        found = find(sources, limit, stack)
        return _decide(found, notebook, staging, limit, assignment, roster, id_regex)


def _decide(found: list[_Found], notebook: str, staging: Path, limit: int, assignment: str,
            roster: Roster | None, id_regex: re.Pattern | None) -> list[Submission]:
    rejected: list[Submission] = []

    def reject(item: _Found, fate: str, reason: str, owner: str = "", named: Named | None = None) -> None:
        tag = hashlib.sha256(item.origin.encode("utf-8", "surrogateescape")).hexdigest()
        rejected.append(Submission(student="rejected-" + tag[:8], origin=item.origin, sha256=tag, status="invalid",
                                   reason=f"{item.origin}: {reason}", rejected=True, owner=owner, fate=fate,
                                   layout=named.layout if named else "", late=bool(named and named.late)))

    gradescope = _gradescope_metadata(found, limit)
    notebooks: dict[str, list[tuple[_Found, Named, Student | None]]] = {}
    others: dict[str, list[tuple[_Found, Named, Student | None]]] = {}

    def _place(item: _Found) -> None:
        """Give the file to a student, or reject it with its fate."""
        if item.ignored:
            reject(item, "ignored", item.ignored)
            return
        if item.whole:
            reject(item, "invalid", item.problem)
            return
        named = identify(item.name, notebook, assignment, id_regex, gradescope)
        notebook_file = is_notebook(item.name)
        if named.ignored:
            reject(item, "ignored", named.ignored, owner=named.student, named=named)
            return
        if named.problem:
            reject(item, "unknown-student" if notebook_file or item.problem else "not-a-notebook",
                   named.problem + (f"; it {item.problem}" if item.problem else ""), named=named)
            return
        if item.undecodable and not named.lms_id:
            reject(item, "unknown-student", (
                f"the zip stores this name as {item.undecodable!r} without saying its encoding (no UTF-8 flag, not "
                f"UTF-8); read by the zip rule (code page 437) it is {item.name!r}, which cannot be trusted as a "
                "student's name: re-create the zip with UTF-8 names (7-Zip, Python's zipfile, macOS) or rename the "
                "file in plain ASCII"), named=named)
            return
        if named.by_name and roster is None:
            reject(item, "unknown-student", (
                f"a {named.layout} download names students by display name ({named.name!r}), which is not an id: "
                "pass --roster class.csv (columns id, name; matched by exact name), or --id-regex"), named=named)
            return
        person = None
        if roster is not None:
            person, why = roster.match(named)
            if person is None:
                reject(item, "unknown-student", why, named=named)
                return
            named.student = person.id
        if item.undecodable:
            named.name = ""  # the display name is garbled; the LMS id is not
        (notebooks if notebook_file else others).setdefault(named.student, []).append((item, named, person))

    for item in found:
        try:
            _place(item)
        except Exception as exc:  # noqa: BLE001 (one file that breaks a rule is that file's row, never a traceback)
            reject(item, "invalid", f"could not be read ({type(exc).__name__}: {str(exc)[:200]}); download it again")

    out: list[Submission] = []
    for student in sorted(set(notebooks) | set(others)):
        group = notebooks.get(student, [])
        extra = others.get(student, [])
        if not group:  # only files that are not notebooks: the student is there, and invalid
            item, named, person = extra[0]
            kinds = ", ".join(Path(i.name).name for i, _, _ in extra)
            sub = _submission(student, item, named, person)
            sub.status, sub.fate = "invalid", "not-a-notebook"
            sub.reason = (f"no notebook submitted, only {kinds}: submit the .ipynb file itself "
                          "(Jupyter: File > Download; Colab: File > Download > Download .ipynb)")
            sub.sha256 = hashlib.sha256(sub.reason.encode()).hexdigest()
            for i, n, _ in extra[1:]:
                reject(i, "not-a-notebook", f"not a notebook; {student} submitted no notebook", student, n)
            out.append(sub)
            continue
        chosen = _choose(student, group, assignment, limit, reject)
        if chosen is None:  # several different newest copies: the student is invalid, every copy named
            newest = _newest(group, assignment)
            item, named, person = newest[0]
            sub = _submission(student, item, named, person)
            sub.status, sub.reason = "invalid", (
                f"{len(newest)} different submissions for {student} and nothing tells which is newer: "
                + ", ".join(g[0].origin for g in newest) + "; keep one and run again")
            sub.sha256 = hashlib.sha256(sub.reason.encode()).hexdigest()
            for i, n, _ in newest[1:]:
                reject(i, "invalid", f"one of {len(newest)} different submissions for {student}; see {item.origin}",
                       student, n)
            out.append(sub)
        else:
            item, named, person = chosen
            sub = _submission(student, item, named, person)
            if named.late:
                sub.notes.append(f"submitted late ({named.layout} marks it late)")
            if not item.problem:
                sub.sha256 = _stream(item, limit, staging / f"{student}.ipynb")
                sub.path = str(staging / f"{student}.ipynb") if sub.sha256 else ""
            if item.problem:
                sub.status, sub.reason = "invalid", f"{item.origin} {item.problem}"
                sub.sha256 = hashlib.sha256(item.origin.encode("utf-8", "surrogateescape")).hexdigest()
            out.append(sub)
        for i, n, _ in extra:
            reject(i, "not-a-notebook", f"not a notebook; {student}'s notebook {out[-1].origin} is the one graded",
                   student, n)
    return [*out, *rejected]


def _submission(student: str, item: _Found, named: Named, person: Student | None) -> Submission:
    canvas = named.lms_id if named.layout == "Canvas" else ""
    moodle = named.lms_id if named.layout == "Moodle" else ""
    if person is not None:
        canvas, moodle = canvas or person.canvas_id, moodle or person.moodle_id
    return Submission(student=student, origin=item.origin, lms_id=named.lms_id, late=named.late,
                      layout=named.layout, name=person.name if person and person.name else named.name,
                      email=(person.email if person and person.email else named.email),
                      canvas_id=canvas, moodle_id=moodle, sis_id=person.sis_id if person else "")


def _newest(group, assignment: str):
    """The copies that count: the assignment's own folder where nbgrader's layout has several, then the newest."""
    pool = group
    if assignment and any(g[1].folder == assignment for g in group):  # submitted/<student>/<other assignment>/
        pool = [g for g in group if not g[1].folder or g[1].folder == assignment]
    top = max(attempt_key(g[1].attempt) for g in pool)
    return [g for g in pool if attempt_key(g[1].attempt) == top]


def _choose(student: str, group, assignment: str, limit: int, reject):
    """The file to grade for `student`, every other copy rejected with its fate; None when the newest differ.

    Of identical newest copies, the one whose time counts is kept: a copy from a layout that says whether it
    was late (Canvas, a Gradescope export) over one that says nothing (nbgrader's folder), and an on-time one
    over a late one (the student had handed in that very notebook in time)."""
    newest = _newest(group, assignment)
    top = newest[0][1].attempt
    for g in group:
        if any(g is n for n in newest):
            continue
        if assignment and g[1].folder and g[1].folder != assignment and any(n[1].folder == assignment for n in newest):
            reject(g[0], "ignored", f"another assignment's folder ({g[1].folder}); {newest[0][0].origin} is graded",
                   student, g[1])
        else:
            reject(g[0], "superseded", f"an older submission of {student} (attempt {g[1].attempt or 'none'} < "
                                       f"{top}); the newest, {newest[0][0].origin}, is graded", student, g[1])
    if len(newest) == 1:
        return newest[0]
    digests = {_digest(g[0], limit) for g in newest}
    if len(digests) != 1 or None in digests:
        return None
    chosen = min(newest, key=lambda g: (not g[1].timed, g[1].late))
    for g in newest:
        if g is not chosen:
            reject(g[0], "duplicate", f"a second submission for {student}, identical to {chosen[0].origin}; ignored",
                   student, g[1])
    return chosen


def rows(subs: list[Submission], statuses: dict[str, tuple[str, str]] | None = None) -> list[dict]:
    """One row per file found, for ASSIGNMENT-intake.csv and the console: file, student, fate, reason.

    `statuses` ({student: (status, reason)}, after grading) gives a student's own file its final fate: a file
    found gradable at import but then `invalid` (or `tampered`, `timeout`...) never says `graded`."""
    statuses = statuses or {}
    out = []
    for s in subs:
        if s.rejected:
            out.append({"file": s.origin, "student": s.owner, "lms_id": "", "name": "", "layout": s.layout,
                        "late": "", "fate": s.fate or "unknown-student", "reason": s.reason})
            continue
        status, reason = statuses.get(s.student, (s.status, s.reason))
        fate = s.fate or status or "graded"
        out.append({"file": s.origin, "student": s.student, "lms_id": s.lms_id, "name": s.name, "layout": s.layout,
                    "late": "yes" if s.late else "", "fate": fate, "reason": reason})
    return out


def fate_counts(table: list[dict]) -> str:
    """'14 files: 9 graded, 2 superseded, 1 duplicate, ...' for the console."""
    counts = Counter(r["fate"] for r in table)
    order = [*FATES, *sorted(set(counts) - set(FATES))]
    return f"{len(table)} file(s) found: " + ", ".join(f"{counts[f]} {f}" for f in order if counts[f])
