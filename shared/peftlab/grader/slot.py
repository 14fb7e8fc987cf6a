"""One submission on one grading slot: its order written, its worker forked, its wall limit kept, its outcome read.

The batch on one machine keeps several slots busy at once (`batch.Batch._pool`);
a Dask worker runs one (`cluster`). Both read a worker's end the same way,
`collect`: the worker's `result.json`, or what its exit code and log say, or the
notebook as far as it ran when the wall limit stopped it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .forkserver import ForkServer
from .outcome import Outcome, clip
from .progress import partial_notebook
from .worker import Job


def start(server: ForkServer, job: Job) -> int:
    """Empty the job's scratch folder, write its order there and fork its worker; the worker's pid."""
    scratch = Path(job.scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    (scratch / "job.json").write_text(job.to_json())
    return server.start(str(scratch / "job.json"), str(scratch / "worker.log"))


def run(server: ForkServer, job: Job) -> Outcome:
    """Grade one job to its end or its wall limit, whichever comes first (the worker and its kernel are then
    killed); its outcome."""
    pid, started, limit = start(server, job), time.monotonic(), job.settings.wall_timeout
    exits: dict[int, int] = {}
    while pid not in exits and time.monotonic() - started <= limit:
        exits.update(server.wait(timeout=max(0.0, min(5.0, started + limit - time.monotonic()))))
    over = pid not in exits
    if over:
        server.kill(pid)
        while pid not in exits:
            exits.update(server.wait(timeout=5.0))
    return collect(job.student, Path(job.scratch), exits[pid], over, limit)


def collect(student: str, scratch: Path, code: int, over: bool, limit: int) -> Outcome:
    """The outcome of a worker that exited with `code`, or was stopped at the wall limit of `limit` s (`over`)."""
    result = scratch / "result.json"
    if over:
        # The notebook as far as it ran, for the feedback (peftlab.grader.progress).
        try:
            _, running = partial_notebook(scratch / "findings.jsonl", scratch / "partial.ipynb", limit)
        except Exception as exc:  # the grade stands without the partial notebook
            running = ""
            (scratch / "partial.error").write_text(f"{type(exc).__name__}: {exc}")
        return Outcome(student=student, status="timeout",
                       reason=f"still running after the {limit} s wall limit; stopped"
                              + (f" while {running} was running" if running else " before its first cell ran"))
    if code == 0 and result.is_file() and not result.is_symlink():
        try:
            return Outcome(**json.loads(result.read_text()))
        except (ValueError, TypeError) as exc:
            return Outcome(student=student, status="error", reason=f"unreadable worker result ({exc})")
    try:
        tail = (scratch / "worker.log").read_text(errors="replace").strip().splitlines()[-3:]
    except OSError:
        tail = ["no worker log"]
    return Outcome(student=student, status="error",
                   reason=f"grader worker exited with code {code}: {clip(' | '.join(tail))}")
