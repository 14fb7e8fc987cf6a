"""One JSON record per run: config, versions, git commit, hardware, time, memory, metrics.

Tables in the README and the benchmarks are built from these files, never typed in.
A session notebook opens its record at the top (`open_run`: start time, load
average) and closes it in its last cell with its own results (`NotebookRun.close`:
wall time, load average at the end, written atomically).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

import torch

from .config import RunConfig
from .files import write_atomic

PACKAGES = ("peftlab", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "trl", "sacrebleu")


def versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git_dir(start: Path) -> Path | None:
    """The repository's git directory above `start`: `.git` itself, or where a worktree's `.git` file points."""
    for folder in (start, *start.parents):
        dot = folder / ".git"
        if dot.is_dir():
            return dot
        if dot.is_file() and dot.read_text().startswith("gitdir:"):
            return (folder / dot.read_text().split(":", 1)[1].strip()).resolve()
    return None


def head_commit(git_dir: Path) -> str | None:
    """HEAD's commit read from the files git keeps, without running git: HEAD, the loose ref, packed-refs."""
    try:
        head = (git_dir / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head or None
        ref = head.split(":", 1)[1].strip()
        common = git_dir
        if (git_dir / "commondir").exists():  # a worktree keeps its refs in the main repository
            common = (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
        for base in (git_dir, common):
            if (base / ref).exists():
                return (base / ref).read_text().strip()
        for line in (common / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        return None
    return None


def git_commit() -> str | None:
    """The commit the package runs from, "-dirty" when tracked files differ from it.

    The commit is read from .git's files, which always answers; only the dirty check runs git, and a
    machine too busy to answer within 60 s gets "-unknown-state" instead of losing the commit."""
    here = Path(__file__).resolve().parent
    git_dir = _git_dir(here)
    sha = head_commit(git_dir) if git_dir else None
    if sha is None:
        return None
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=60, cwd=here)
    except (OSError, subprocess.TimeoutExpired):
        return sha + "-unknown-state"
    if dirty.returncode != 0:
        return sha + "-unknown-state"
    return sha + ("-dirty" if dirty.stdout.strip() else "")


def hardware() -> dict:
    """Where a run ran. The CPU's kind is part of every number: torch emulates bfloat16 20-40x slower
    on a CPU without AVX512-BF16/AMX (or Arm BF16), so a time means nothing without it."""
    from .devices import cpu_bf16_native, cpu_kind

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": torch.get_num_threads(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_kind": cpu_kind(),
        "cpu_bf16_native": cpu_bf16_native(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def busy_cores(seconds: float = 2.0) -> float | None:
    """How many cores others keep busy now: non-idle CPU time over `seconds`, from /proc/stat (None elsewhere).

    Unlike the load average, which still counts a benchmark that ended a minute ago, this says whether the
    machine is shared while the next measurement starts."""
    def sample():
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    cores = len(Path("/proc/stat").read_text().split("\ncpu")) - 1
    elapsed = total1 - total0
    return round(cores * (elapsed - (idle1 - idle0)) / elapsed, 2) if elapsed else 0.0


def make_record(config: RunConfig, **fields) -> dict:
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config.to_dict(),
        "versions": versions(),
        "git_commit": git_commit(),
        "hardware": hardware(),
        **fields,
    }


def write_record(record: dict, path: str | Path) -> Path:
    """Write atomically: a crash mid-write never leaves a truncated record."""
    return write_atomic(path, json.dumps(record, indent=2, default=str))


def read_record(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the system has none, as on Windows)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


class RecordError(RuntimeError):
    """A notebook's run record was used out of order: closed twice, or given a field it fills itself."""


class NotebookRun:
    """A session notebook's run record, opened in its first cell and closed in its last.

    Opening notes the start time and the load average: on a shared machine every time a notebook reports is
    an upper bound, and the record says how shared it was. Closing adds the wall time, the load average at
    the end and torch's thread count (at the end: `threads.fit` may change it during the run), then writes
    `<config.output_dir>/record.json` atomically and prints where, with the wall-time line.
    """

    # The fields a notebook run's record always has, filled here rather than by the notebook.
    OWN_FIELDS = ("kind", "preset", "wall_s", "load_average_start", "load_average_end", "torch_threads")

    def __init__(self, config: RunConfig, kind: str, preset: str | None = None):
        self.config, self.kind, self.preset = config, kind, preset
        self.start = time.perf_counter()
        self.load_average_start = load_average()
        self.path: Path | None = None  # set when closed

    def close(self, path: str | Path | None = None, **results) -> dict:
        """Write the record with the notebook's `results` (to `path`, by default the config's output_dir) and
        return it. A second close raises RecordError: the first record stands."""
        if self.path is not None:
            raise RecordError(f"this {self.kind} run's record was already written to {self.path}; "
                              "open a new one (record.open_run) to record another run.")
        taken = sorted(set(results) & set(self.OWN_FIELDS))
        if taken:
            raise RecordError(f"{', '.join(taken)}: filled by the run record itself; give the notebook's "
                              "results under other names.")
        wall = time.perf_counter() - self.start
        end = load_average()
        summary = make_record(self.config, kind=self.kind, preset=self.preset, wall_s=wall,
                              load_average_start=self.load_average_start, load_average_end=end,
                              torch_threads=torch.get_num_threads(), **results)
        self.path = write_record(summary, path or Path(self.config.output_dir) / "record.json")
        print("run record:", self.path)
        print(f"notebook wall time {wall / 60:.1f} min; {_load_line(self.load_average_start, end)}, "
              f"on {os.cpu_count()} cores")
        return summary


def _load_line(start: list[float] | None, end: list[float] | None) -> str:
    if start is None or end is None:
        return "load average not available here"
    return f"load average {start[0]:.1f} at start, {end[0]:.1f} now"


def open_run(config: RunConfig, kind: str, preset: str | None = None) -> NotebookRun:
    """Start a notebook's run record now; close it with the notebook's results at the end."""
    return NotebookRun(config, kind, preset)
