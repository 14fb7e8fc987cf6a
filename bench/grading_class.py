"""A simulated class graded end to end on Dask: time, and the head's and the scheduler's memory as the class grows.

    python bench/grading_class.py [--sizes 100 1000] [--workers 2]

Builds classes of the grading fixture (tests/fixtures/course, the assignment
`90_fixture`: half solved, half blank, every student's notebook different) and
grades each with `peftlab-grade --scheduler` against a Dask scheduler and
`--workers` Dask worker processes started here, each in a process of its own:
the head (the batch), the scheduler and the workers. Prints per class size the
wall time, the part of it the head spent running the solution through the
probes for every submission's seed (before any grading), the time per
submission, the head's peak resident memory (its own
`ru_maxrss`) and the scheduler's (sampled every 0.2 s). The head's must stay
flat as the class grows: it holds a bounded number of tasks in flight and
releases each result once recorded. Records the CPU and the load average.
Writes runs/bench/grading_class.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
HEAD = """
import json, resource, sys, time
from pathlib import Path
from peftlab.grader.batch import Batch
from peftlab.grader.settings import GRADING_PARAMETERS, Settings
from peftlab.grader.assignment import Assignment
course, work, folder, address = sys.argv[1:5]
settings = Settings(workers=1, cell_timeout=60, wall_timeout=300, parameters={**GRADING_PARAMETERS, "factor": 2})
expect, spent = Assignment.expect, [0.0]
def timed(self, seeds):  # the solution's runs through the probes, on the head, for every seed of the class
    t = time.perf_counter()
    expect(self, seeds)
    spent[0] += time.perf_counter() - t
Assignment.expect = timed
start = time.perf_counter()
results = Batch(Path(course), "90_fixture", Path(work), settings, log=lambda *a: None, scheduler=address).run([folder])
print(json.dumps({"seconds": time.perf_counter() - start, "expect_seconds": spent[0], "graded": len(results),
                  "statuses": sorted({o.status for _, o in results}),
                  "head_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_class(course: Path, n: int, dest: Path) -> None:
    import nbformat

    release = nbformat.read(course / "exercises" / "90_fixture" / "fixture.ipynb", as_version=4)
    dest.mkdir(parents=True)
    for i in range(n):
        nb = nbformat.from_dict(release)
        for cell in nb.cells:
            gid = cell.metadata.get("nbgrader", {}).get("grade_id")
            if i % 2 == 0 and gid == "double":
                cell.source = "def double(x):\n    return factor * x"
            elif i % 2 == 0 and gid == "halve":
                cell.source = "def halve(x):\n    return x / 2"
            elif gid == "explain":
                cell.source = f"Student {i}'s answer."
        nbformat.write(nb, dest / f"student{i:05d}.ipynb")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def grade(course: Path, n: int, workers: int, tmp: Path) -> dict:
    folder = tmp / f"class-{n}"
    make_class(course, n, folder)
    dask_cli = str(Path(sys.executable).with_name("dask"))
    address = f"tcp://127.0.0.1:{_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True, "env": env}
    scheduler = subprocess.Popen([dask_cli, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                                  "--dashboard-address", ":0"], **quiet)
    procs = [scheduler] + [subprocess.Popen([dask_cli, "worker", address, "--nthreads", "1", "--memory-limit", "0"],
                                            **quiet) for _ in range(workers)]
    peak, done = [0.0], threading.Event()

    def sample():
        while not done.wait(0.2):
            peak[0] = max(peak[0], _rss_mib(scheduler.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out = subprocess.run([sys.executable, "-c", HEAD, str(course), str(tmp / f"work-{n}"), str(folder), address],
                             capture_output=True, text=True, env=env, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        done.set()
        sampler.join()
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return {**result, "n": n, "scheduler_peak_mib": round(peak[0], 1),
            "seconds_per_submission": round(result["seconds"] / n, 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes (one slot each)")
    parser.add_argument("--out", default="runs/bench/grading_class.json")
    args = parser.parse_args(argv)

    from peftlab import record
    from peftlab.grader import exercises

    tmp = Path(tempfile.mkdtemp(prefix="peftlab-bench-class-"))
    load_before = os.getloadavg()
    try:
        course = tmp / "course"
        shutil.copytree(ROOT / "tests" / "fixtures" / "course", course)
        exercises.release(course)
        rows = [grade(course, n, args.workers, tmp) for n in args.sizes]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    hw = record.hardware()
    print(f"the grading fixture on Dask, {args.workers} worker process(es) here, {os.cpu_count()} cores "
          f"({hw.get('cpu_kind', '?')}):")
    print(f"  {'class':>6} {'wall s':>8} {'solution s':>11} {'s/sub':>7} {'head peak MiB':>14} "
          f"{'scheduler peak MiB':>19}  statuses")
    for r in rows:
        print(f"  {r['n']:>6} {r['seconds']:8.1f} {r['expect_seconds']:11.1f} {r['seconds_per_submission']:7.3f} "
              f"{r['head_peak_mib']:14.1f} {r['scheduler_peak_mib']:19.1f}  {', '.join(r['statuses'])}")
    print("  (solution s: the head's runs of the solution through the probes, for every submission's seed, "
          "before grading starts; in the wall time)")
    load_after = os.getloadavg()
    print(f"  load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"workers": args.workers, "rows": rows, "hardware": hw, "versions": record.versions(),
                               "commit": record.git_commit(),
                               "load_average": {"before": load_before, "after": load_after}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
