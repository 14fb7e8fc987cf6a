"""How many torch threads a CPU run uses: every core while the machine is free, fewer while others hold some.

Why it matters: torch's intra-op pool meets at a barrier after every operator. When another
process holds one of two cores, the thread the OS deschedules makes every operator wait for it.
Measured on the case study's float32 training step held to AVX2 (bench/records/cpu_speed_avx2.json,
2 cores): 2 threads take 2.71 s idle but 17.7 s beside one busy process; 1 thread takes 4.95 s
idle and 4.85 s busy. Neither fixed count is right on a student's laptop, where a browser or a
video call comes and goes, so a CPU run starts with the cores nobody else uses and re-checks as
it trains (`AdaptThreads`). Setting OMP_NUM_THREADS (or PEFTLAB_THREADS) pins the count instead.

"Others" is what /proc/stat counts as busy on the whole machine minus this process's own CPU
time over the same interval, so our own threads never count against us. Linux only; elsewhere
(macOS, Windows) torch's default stays.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from transformers import TrainerCallback

PIN_VARIABLES = ("PEFTLAB_THREADS", "OMP_NUM_THREADS")
STAT = Path("/proc/stat")


def pinned() -> str | None:
    """The variable that pins the thread count, if the user set one."""
    return next((name for name in PIN_VARIABLES if os.environ.get(name)), None)


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. a container's cpuset), else all."""
    cpus = affinity()
    return len(cpus) if cpus else os.cpu_count() or 1


def affinity() -> set[int] | None:
    """The CPUs this process may run on, or None where the OS does not say."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


class CpuShare:
    """Cores kept busy by other processes between two calls of `others()`, from /proc/stat.

    Only this process's CPUs count (the per-CPU lines of its affinity mask): in a container limited
    to 2 CPUs of a large host, /proc/stat still shows the whole host, whose other tenants run on
    other CPUs and do not slow this run down."""

    def __init__(self):
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.cpus = affinity()
        self.last = self._sample()

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            lines = STAT.read_text().splitlines()
            per_cpu = {int(line.split()[0][3:]): line for line in lines if line[:3] == "cpu" and line[3:4].isdigit()}
            mine = [per_cpu[c] for c in sorted(self.cpus or ()) if c in per_cpu] or lines[:1]
            busy_s = 0.0
            for line in mine:
                fields = [int(x) for x in line.split()[1:]]
                idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
                busy_s += (sum(fields[:8]) - idle) / self.hz  # guest time is already inside user time
        except (OSError, ValueError, IndexError):
            return None
        own = os.times()
        return time.monotonic(), busy_s, own.user + own.system

    def age(self) -> float:
        """Seconds since the last sample."""
        return time.monotonic() - self.last[0] if self.last else 0.0

    def others(self) -> float | None:
        """Mean number of cores others kept busy since the last call (None where /proc/stat is missing)."""
        now = self._sample()
        before, self.last = self.last, now
        if now is None or before is None or now[0] - before[0] <= 0:
            return None
        wall = now[0] - before[0]
        return max(0.0, ((now[1] - before[1]) - (now[2] - before[2])) / wall)


def choose(others: float | None, cores: int, ceiling: int) -> int:
    """Threads for `cores` usable cores when others keep `others` of them busy: at least one, at most `ceiling`."""
    if others is None:
        return ceiling
    return max(1, min(ceiling, cores - round(others)))


# Never more threads than the process had: torch's default (one per physical core) or what the user
# set with torch.set_num_threads. A count that differs from the one fit() last set was the user's.
_ceiling: int | None = None
_ours: int | None = None


def _current_ceiling(torch) -> int:
    global _ceiling
    now = torch.get_num_threads()
    if _ceiling is None or now != _ours:
        _ceiling = now
    return _ceiling


def fit(share: CpuShare | None = None, log=print, min_seconds: float = 0.5) -> int | None:
    """Set torch's threads to the cores nobody else used since `share` last sampled (a new one: from now on);
    returns the count, or None when the user pinned it or there is no /proc/stat.

    It waits until the interval is `min_seconds` long: /proc/stat counts in 10 ms ticks."""
    import torch

    if pinned() or not STAT.exists():
        return None
    share = share or CpuShare()
    time.sleep(max(0.0, min_seconds - share.age()))
    global _ours
    ceiling = _current_ceiling(torch)
    cores = usable_cores()
    others = share.others()
    threads = choose(others, cores, ceiling)
    before = torch.get_num_threads()
    _ours = threads
    if threads != before:
        torch.set_num_threads(threads)
        if log is not None:
            log(f"cpu threads    {before} -> {threads}: other processes keep {others:.1f} of {cores} cores busy "
                f"(set OMP_NUM_THREADS to pin the count)")
    return threads


class AdaptThreads(TrainerCallback):
    """Re-fit torch's threads to the free cores every `every_s` seconds of training (CPU runs only)."""

    def __init__(self, every_s: float = 20.0, log=print):
        self.every_s, self.log = every_s, log
        self.share = CpuShare()
        self.checked = time.monotonic()
        self.changes: list[tuple[int, int]] = []  # (global step, threads) whenever the count changed

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self.checked < self.every_s:
            return
        import torch

        before = torch.get_num_threads()
        threads = fit(self.share, log=self.log)
        self.checked = time.monotonic()
        if threads is not None and threads != before:
            self.changes.append((state.global_step, threads))
