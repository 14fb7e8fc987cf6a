"""The user ids a root grader's kernels run as, one per worker, and their socket folders.

A batch locks its ids (`claim_uids`), so that a second batch on the machine
takes others; the kernels' socket folders sit in root's RUN_DIR, one folder
per id (`kernels_dir`), emptied when a job ends and when a batch claims the id
(`remove_kernel_folders`).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from .course import GradingError

RUN_DIR = "/run/peftlab-grader"  # root's: uid locks and kernels' socket folders (short paths, nobody else's)


def processes_of(uid: int, none: int = 256, zombies: bool = True) -> int:
    """Processes of `uid` (which RLIMIT_NPROC counts, zombies included); `none` where /proc cannot tell."""
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        match = next((ln for ln in text.splitlines() if ln.startswith("Uid:")), "")
        count += match.split()[1:2] == [str(uid)] and (zombies or "\nState:\tZ" not in text)
    return count if os.path.isdir("/proc/self") else none  # no /proc (macOS): a generous margin


def kernels_dir(uid: int | None) -> str:
    """Where the socket folders of `uid`'s kernels go: a folder of root's, emptied when a job ends and when
    a batch claims the id (`claim_uids`); the system's temporary folder for a grader that is not root."""
    if uid is None or os.geteuid() != 0:
        return tempfile.gettempdir()
    folder = os.path.join(RUN_DIR if os.path.isdir(os.path.dirname(RUN_DIR)) else tempfile.gettempdir(),
                          f"kernels-{uid}")
    _own_dir(os.path.dirname(folder))
    _own_dir(folder)
    return folder


def _own_dir(path: str) -> None:
    """`path` as a folder of this user's that nobody else can write, never through a link."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise GradingError(f"{path} is not a folder of the grader's own that only it can write; remove it")


def remove_kernel_folders(uid: int | None) -> None:
    """Remove what `uid`'s kernels left in their socket folders (only ever the grader's connection files:
    what they wrote went to a tmpfs that died with them)."""
    if uid is not None and os.geteuid() == 0:
        shutil.rmtree(kernels_dir(uid), ignore_errors=True)  # rmtree removes links, never follows them


class UidClaim:
    """The user ids [base, base + count) that this batch's kernels run as, held with one lock per id.

    Two batches on one machine with the same ids would share the per-user process limit and each other's
    leftovers ("Kernel died before replying to kernel_info", a GradingError on the solution's run). The
    locks are `flock`s on files in RUN_DIR, which the kernel drops when the process ends, kill -9 included.
    `release()` gives them back."""

    def __init__(self, base: int, count: int, fds: list[int]):
        self.base, self.count, self._fds = base, count, fds

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def _lock_uid(uid: int) -> tuple[int | None, str]:
    """(descriptor holding `uid`'s lock, '') or (None, who holds it)."""
    import fcntl

    _own_dir(RUN_DIR)
    path = os.path.join(RUN_DIR, f"uid-{uid}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        return None, f"user id {uid} is held by the batch of process {holder} ({path})"
    busy = processes_of(uid, none=0, zombies=False)
    if busy:
        os.close(fd)
        return None, (f"user id {uid} still runs {busy} process(es): a kernel left by a batch that was killed "
                      "before this grader stopped them, or a user of that id")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd, ""


def claim_uids(base: int, count: int, tries: int = 64, log=print) -> UidClaim:
    """Lock `count` user ids from `base` for this batch; if another batch holds one of them (or a process of
    one still runs), move up by `count` ids, up to `tries` times, saying so. Stale socket folders of the
    ids claimed are removed: nobody else uses them now."""
    reasons = []
    for attempt in range(tries):
        start, fds = base + attempt * count, []
        for uid in range(start, start + count):
            fd, why = _lock_uid(uid)
            if fd is None:
                reasons.append(why)
                break
            fds.append(fd)
        if len(fds) == count:
            if attempt:
                log(f"user ids {base}-{base + count - 1} are in use ({reasons[0]}); this batch's kernels run as "
                    f"{start}-{start + count - 1} instead (--uid-base {start} to choose)")
            for uid in range(start, start + count):
                remove_kernel_folders(uid)
            return UidClaim(start, count, fds)
        for fd in fds:
            os.close(fd)
    raise GradingError(f"no free range of {count} user ids from {base} to {base + tries * count - 1}: "
                       f"{reasons[0]}; another batch is grading on this machine. Wait for it, or give this one "
                       "ids nobody uses: --uid-base N (or PEFTLAB_GRADER_UID_BASE=N)")
