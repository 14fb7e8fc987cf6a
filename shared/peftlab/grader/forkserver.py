"""Grading workers forked from one process that imported the grader once.

A fresh Python per submission spent most of a small submission's time
importing nbgrader, nbconvert, papermill, SQLAlchemy and alembic (3.4 s of
5.4 s for the grading fixture on an idle 2-core machine, `bench/grading.py`).
The class grader instead starts one server,

    python -m peftlab.grader.forkserver

which imports `peftlab.grader.warm` once and then forks one worker per
request. It speaks JSON lines: on its stdin the batch writes
`{"job": JOB.json, "log": worker.log, "env": {...}, "cwd": "..."}`; on its
stdout it answers `{"started": pid}` for each request, in order, and
`{"exited": pid, "code": n}` when a worker ends (n < 0: killed by signal -n).
A worker runs `peftlab.grader.worker.main(JOB.json)` in a session of its own
(the batch stops it and its kernel with one `killpg`), with its output in
its log, and the batch's environment and folder of the request (not of when
the server started). The server exits when its stdin closes, and its
workers die with it (PR_SET_PDEATHSIG).

The server is a fresh single-threaded Python, so nothing of the batch's
process (threads, open files, an instructor's notebook) is forked, and the
batch's `__main__` is never imported again, unlike with multiprocessing's
fork server.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback

from .launcher import die_with_parent
from .worker import main as grade_job


def _child(request: dict) -> None:
    """In the forked worker: never returns."""
    code = 1
    try:
        os.setsid()
        die_with_parent()
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(null)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        code = grade_job([request["job"]])
    except BaseException:  # noqa: BLE001 - whatever happens, the log says it and the worker exits
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def serve() -> int:
    """The server's loop: fork on each request, report each exit; stop when stdin closes."""
    # papermill imports pyarrow (for HDFS paths, which grading never uses) when it can, and pyarrow starts
    # threads of its own (jemalloc's background thread, a pool). Forking a process with threads is unsafe,
    # so the server keeps pyarrow out and stays single-threaded.
    sys.modules.setdefault("pyarrow", None)
    try:  # the one lazy import here: the preload, which renders a page and opens a gradebook when imported
        from . import warm  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - workers still work, only slower (they import what they need)
        print(f"peftlab.grader.forkserver: preloading failed ({type(exc).__name__}: {exc}); "
              "workers will import the grader themselves", file=sys.stderr, flush=True)
    if _threads() > 1:
        print(f"peftlab.grader.forkserver: {_threads()} threads after preloading; forking a threaded process "
              "can deadlock a worker (its wall limit would stop it)", file=sys.stderr, flush=True)
    die_with_parent()
    inp, out = sys.stdin.fileno(), sys.stdout
    buffer, children, open_ = b"", set(), True
    while open_ or children:
        ready, _, _ = select.select([inp] if open_ else [], [], [], 0.05)
        if ready:
            chunk = os.read(inp, 65536)  # the raw descriptor: a buffered reader could hide a request from select
            open_ = bool(chunk)
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _child(request)
                children.add(pid)
                out.write(json.dumps({"started": pid}) + "\n")
                out.flush()
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                break
            if pid == 0:
                break
            children.discard(pid)
            try:
                out.write(json.dumps({"exited": pid, "code": os.waitstatus_to_exitcode(status)}) + "\n")
                out.flush()
            except BrokenPipeError:
                open_ = False
        if not open_ and children:
            time.sleep(0.05)
    return 0


class ForkServer:
    """The batch's side: start workers, learn when they end, stop them."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "peftlab.grader.forkserver"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0)
        self._buffer = b""
        self._exits: dict[int, int] = {}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _lines(self, timeout: float) -> list[dict]:
        ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, timeout))
        if not ready:
            return []
        chunk = os.read(self.proc.stdout.fileno(), 65536)
        if not chunk:
            raise RuntimeError(f"the grading fork server stopped (exit code {self.proc.wait()})")
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def _note(self, message: dict) -> int | None:
        if "exited" in message:
            self._exits[message["exited"]] = message["code"]
            return None
        return message["started"]

    def start(self, job: str, log: str) -> int:
        """Fork a worker for `job` (JOB.json) with its output in `log`; its pid."""
        request = {"job": job, "log": log, "env": dict(os.environ), "cwd": os.getcwd()}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        while True:
            # Several messages can come in one read (a worker's exit before this one's start): note them all.
            started = [pid for pid in map(self._note, self._lines(60.0)) if pid is not None]
            if started:
                return started[0]
            if not self.alive():
                raise RuntimeError(f"the grading fork server stopped (exit code {self.proc.returncode})")

    def wait(self, timeout: float) -> dict[int, int]:
        """{pid: exit code} of the workers that ended, waiting up to `timeout` seconds for the first."""
        deadline = time.monotonic() + timeout
        while not self._exits:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for message in self._lines(left):
                self._note(message)
        exits, self._exits = self._exits, {}
        return exits

    @staticmethod
    def kill(pid: int) -> None:
        """Stop a worker, its kernel and whatever the kernel started (the worker's session)."""
        for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
            try:
                target()
                return
            except ProcessLookupError:
                continue

    def close(self) -> None:
        """No more workers: the server exits once the running ones have ended."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


if __name__ == "__main__":
    sys.exit(serve())
