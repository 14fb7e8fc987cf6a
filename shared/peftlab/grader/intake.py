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
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .course import GradingError
from .settings import Settings

# Letters of any script, digits, . _ - @; no leading dot, no path separators.
STUDENT_ID = re.compile(r"^\w[\w.@-]{0,63}$")


@dataclass
class Submission:
    student: str
    origin: str  # where it came from, for messages
    path: str = ""  # staged copy
    sha256: str = ""
    status: str = ""
    reason: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class _Found:
    name: str  # path inside the source, for the student's name
    origin: str
    data: bytes | None = None
    problem: str = ""


def student_from(name: str, notebook: str) -> str:
    parts = Path(name).parts
    stem = Path(name).stem
    if Path(name).name == notebook and len(parts) >= 2:
        return unicodedata.normalize("NFC", parts[-2])  # alice/custom_dataset.ipynb
    for suffix in (f"_{Path(notebook).stem}", f"-{Path(notebook).stem}"):
        stem = stem.removesuffix(suffix)  # alice_custom_dataset.ipynb
    return unicodedata.normalize("NFC", stem)


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
    """Notebooks at the top of `source` and one folder down, without following any link."""
    found = []

    def visit(folder: Path, rel: str, depth: int) -> None:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            name = f"{rel}{entry.name}"
            if entry.name in (".ipynb_checkpoints", "__MACOSX") or entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                if depth == 0:
                    visit(Path(entry.path), name + "/", 1)
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
                if info.is_dir() or "__MACOSX" in info.filename or "/." in f"/{info.filename}":
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
    except (zipfile.BadZipFile, OSError, NotImplementedError) as exc:
        raise GradingError(f"{source}: not a readable zip file ({exc}).") from None
    return found


def import_submissions(sources: list[str | Path], notebook: str, staging: Path,
                       settings: Settings | None = None) -> list[Submission]:
    """Stage every notebook found in folders / zip files / single files; invalid ones carry a reason."""
    limit = (settings or Settings()).max_notebook_bytes
    staging.mkdir(parents=True, exist_ok=True)
    found: list[_Found] = []
    for source in map(Path, sources):
        if source.is_dir() and not source.is_symlink():
            found += _walk_folder(source, limit)
        elif source.suffix == ".zip" and source.is_file():
            found += _walk_zip(source, limit)
        elif source.suffix == ".ipynb" and (source.is_file() or source.is_symlink()):
            data, problem = read_regular(source, limit)
            found.append(_Found(source.name, str(source), data, problem))
        else:
            raise GradingError(f"{source}: not a folder, a .zip or an .ipynb file.")

    out: dict[str, Submission] = {}
    rejected: list[Submission] = []
    for item in found:
        student = student_from(item.name, notebook)
        sub = Submission(student=student, origin=item.origin)
        tag = hashlib.sha256(item.origin.encode()).hexdigest()
        if not STUDENT_ID.match(student):
            sub.student = "invalid-" + tag[:8]
            sub.status, sub.reason = "invalid", (
                f"{item.origin}: cannot tell the student from the name {item.name!r}; name files <student>.ipynb "
                "(letters, digits, . _ - @)")
            rejected.append(sub)
            continue
        if student in out:
            sub.student = f"{student}-duplicate-" + tag[:8]
            sub.status, sub.reason = "invalid", f"{item.origin}: a second submission for {student} (first: {out[student].origin})"
            rejected.append(sub)
            continue
        if item.problem:
            sub.status, sub.reason = "invalid", f"{item.origin} {item.problem}"
            sub.sha256 = tag
        else:
            sub.sha256 = hashlib.sha256(item.data).hexdigest()
            sub.path = str(staging / f"{student}.ipynb")
            write_new(Path(sub.path), item.data)
        out[student] = sub
    return [*out.values(), *rejected]


def write_new(path: Path, data: bytes) -> None:
    """Write `data` to a fresh file at `path` (written beside it, then renamed over it: never through a link)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
