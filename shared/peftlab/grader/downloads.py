"""Every file of a class's download: folders walked, zip files listed, single notebooks; regular files only.

`find(sources, limit, stack)` lists each file found as a `Found`, which
`peftlab.grader.intake` gives to a student or rejects; `stream` reads one.

Only regular files are read. A symbolic link, a hard link (a second name for a
file elsewhere, such as the course's solution) or a special file in a
submission is rejected with a reason, never followed: a student's archive can
hold a link to any file on the grader's machine. Files are streamed: a zip of
sixty 19 MiB notebooks is read a chunk at a time, never held in memory.

Zip names without the UTF-8 flag are read by the zip rules: the Info-ZIP
Unicode Path field when present, else UTF-8 when the bytes are valid UTF-8,
else code page 437 (the format's default). Such a name read as code page 437
that is not plain ASCII is marked (`Found.undecodable`): it was probably
written in some other encoding (Latin-1, a Windows code page).
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .course import GradingError

MAX_DEPTH = 5  # folder levels searched below a source (exchange/course/inbound/<submission>/nb.ipynb is four)
CHUNK = 1 << 20  # bytes read at a time


@dataclass
class Found:
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


def _walk_folder(source: Path, limit: int) -> list[Found]:
    """Every file in `source` and up to MAX_DEPTH folders down, without following any link.

    Hidden folders (.git, .ipynb_checkpoints) and folders too deep are one row each, not searched."""
    found = []

    def visit(folder: Path, rel: str, depth: int) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            found.append(Found(rel or source.name, str(folder), problem=f"cannot be listed ({exc.strerror})",
                                whole=True))
            return
        for entry in entries:
            name = printable(f"{rel}{entry.name}")  # a name in no encoding never becomes a student's
            origin = printable(entry.path)
            if entry.is_dir(follow_symlinks=False):
                if entry.name.startswith(".") or entry.name == "__MACOSX":
                    found.append(Found(name, origin + "/", ignored=f"a hidden or system folder ({entry.name}), "
                                                                   "not searched"))
                elif depth >= MAX_DEPTH:
                    found.append(Found(name, origin + "/", ignored=f"a folder more than {MAX_DEPTH} levels below "
                                                                   f"{source}, not searched; pass it on its own"))
                else:
                    visit(Path(entry.path), name + "/", depth + 1)
                continue
            path = Path(entry.path)
            found.append(Found(name, origin, (lambda p=path: _open_regular(p, limit)),
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


def _walk_zip(source: Path, limit: int, stack: ExitStack) -> list[Found]:
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
            found.append(Found(name, origin, (lambda i=info: zf.open(i)), problem, undecodable=raw))
    except (zipfile.BadZipFile, OSError, NotImplementedError, EOFError, zipfile.LargeZipFile, ValueError) as exc:
        # One broken download must not stop the class: the archive itself is reported.
        return [Found(source.name, str(source), problem=f"is not a readable zip file ({exc}); download it again",
                       whole=True)]
    if not found:
        return [Found(source.name, str(source), ignored="an empty archive: no file in it")]
    return found


def stream(item: Found, limit: int, dest: Path | None = None) -> str:
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


def find(sources: list[str | Path], limit: int, stack: ExitStack) -> list[Found]:
    """Every file of the sources (folders, zip files, single notebooks)."""
    found: list[Found] = []
    for source in map(Path, sources):
        if source.is_dir() and not source.is_symlink():
            found += _walk_folder(source, limit)
        elif source.suffix.lower() == ".zip" and source.is_file():
            found += _walk_zip(source, limit, stack)
        elif source.suffix == ".ipynb" and (source.is_file() or source.is_symlink()):
            found.append(Found(source.name, str(source), (lambda p=source: _open_regular(p, limit)),
                                _regular_problem(source, limit)))
        elif not source.exists():
            raise GradingError(f"{source}: no such file or folder; check the path of the download.")
        else:
            raise GradingError(f"{source}: not a folder, a .zip or an .ipynb file; pass the download as the LMS "
                               "gave it (a zip or an unzipped folder).")
    return found
