"""One JSON record per run: config, versions, git commit, hardware, time, memory, metrics.

Tables in the README and the benchmarks are built from these files, never typed in.
"""

from __future__ import annotations

import json
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
    """Where a run ran. The CPU's kind is part of every number: torch emulates bfloat16 50-80x slower
    on a CPU without AVX512-BF16/AMX (or Arm BF16), so a time means nothing without it."""
    from .models import cpu_bf16_native, cpu_kind

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
