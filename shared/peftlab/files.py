"""Files the package reads and writes: its own data files, and writes that never leave half a file.

`package_file(name)` is the one way into `peftlab/data/` (held-out sets, word
lists, the chat template). `write_atomic(path, data)` is the one way to replace
a file that someone may be reading: run records, the grader's CSVs, caches and
staged notebooks. It writes a fresh file beside the target and renames it
over the target, so a crash leaves the old file or the new one, never half of
one; the fresh file is created with `O_EXCL | O_NOFOLLOW`, so a link planted
where it goes is never written through.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def package_file(name: str) -> Path:
    """`peftlab/data/<name>`, a data file shipped with the package (installed unzipped, so a real path)."""
    return Path(str(resources.files("peftlab") / "data" / name))


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Replace `path` with `data` (text is written as UTF-8): written beside it, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)
    return path
