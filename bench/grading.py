"""Grading throughput: plain nbgrader against peftlab-grade with one worker and with N, on this machine.

    python bench/grading.py [--assignment 05_custom_dataset] [--n 8] [--workers N] [--cluster]

Builds a class of `n` submissions of one assignment (alternately the solution
filled into the student notebook and the untouched notebook) and grades it
three times, in one run: plain `nbgrader autograde` (sequential, no sandbox,
no probes, through nbgrader's API), then `peftlab-grade` with one worker and
with N (default: the number of cores), each into a fresh grading folder with
the sandbox on when bubblewrap is installed. The class's set-up (the scratch
course, the fork server's imports, the solution's run through the probes) is
timed apart: it is paid once per class. Prints submissions per minute,
the ratios against the targets (one worker within 1.25x plain's time, N
workers at least 1.6x plain's throughput), with `--cluster` a fourth run on a
Dask cluster of N processes here (`--cluster local:N`: target within 1.2x the
fork server's N workers, the engine's overhead per submission), whether the
peftlab-grade CSVs are identical, where the time of one submission goes (worker start, checks,
kernel start, the notebook's cells, canaries, probes, kernel stop, nbgrader's
own work, feedback), the cores other work kept busy just before, and the load
average before and after: numbers measured while others share the machine say so. Writes runs/bench/grading.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_class(root: Path, assignment: str, n: int, dest: Path) -> None:
    """Student notebooks: the release with every solution filled in, or untouched."""
    import nbformat
    from peftlab.grader.course import fill_solutions

    solved = fill_solutions(root, assignment)
    blank = fill_solutions(root, assignment, only=set())
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        nbformat.write(solved if i % 2 == 0 else blank, dest / f"student{i:03d}.ipynb")


def plain_nbgrader(root: Path, assignment: str, folder: Path, tmp: Path, cell_timeout: int) -> float:
    """Seconds for nbgrader's own autograde of every notebook in `folder`, one after another (no sandbox)."""
    from peftlab.grader import course as course_mod

    course = course_mod.scratch_course(root, [assignment], into=tmp / "plain")
    notebook = course_mod.source_notebook(root, assignment).name
    students = sorted(p.stem for p in folder.glob("*.ipynb"))
    for student in students:
        dest = course / "submitted" / student / assignment
        dest.mkdir(parents=True)
        shutil.copyfile(folder / f"{student}.ipynb", dest / notebook)
    api = course_mod.nbgrader_api(course_mod.nbgrader_config(course, cell_timeout=cell_timeout))
    start = time.perf_counter()
    for student in students:
        result = api.autograde(assignment, student, force=True, create=True)
        if not result.get("success"):
            raise RuntimeError(f"plain nbgrader failed on {student}: {(result.get('error') or '')[-500:]}")
    return time.perf_counter() - start


STEPS = ("worker_start", "check", "copy", "kernel_start", "cells", "canaries", "probes", "kernel_stop",
         "nbgrader_other", "read", "feedback", "record")


def profile(results, seconds: float, workers: int) -> dict[str, float]:
    """Mean seconds per submission in each step (worker-seconds: with N workers they overlap). `seconds` is the
    grading's wall time, without the once-per-class work."""
    n = max(1, len(results))
    mean = {k: sum(o.timings.get(k, 0.0) for _, o in results) / n
            for k in ("check", "copy", "kernel_start", "cells", "canaries", "probes", "kernel_stop", "nbgrader", "read",
                      "feedback", "record")}
    mean["nbgrader_other"] = max(0.0, mean.pop("nbgrader") - sum(
        mean[k] for k in ("kernel_start", "cells", "canaries", "probes", "kernel_stop")))
    inside = sum(o.seconds for _, o in results) / n
    # The rest of each submission's share of the wall clock, less the head's recording (timed apart): forking
    # the worker, its start and exit, and the batch noticing it ended before the slot takes the next submission.
    mean["worker_start"] = max(0.0, seconds * workers / n - inside - mean["record"])
    return {k: round(mean.get(k, 0.0), 3) for k in STEPS}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="course root")
    parser.add_argument("--assignment", default="05_custom_dataset")
    parser.add_argument("--n", type=int, default=8, help="submissions in the class")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default="runs/bench/grading.json")
    parser.add_argument("--cluster", action="store_true",
                        help="also grade the class on a Dask cluster of --workers processes on this machine "
                             "(--cluster local:N), against the fork server's parallel run (target: within 1.2x)")
    args = parser.parse_args(argv)

    from peftlab import record
    from peftlab.grader import sandbox
    from peftlab.grader.batch import Batch
    from peftlab.grader.settings import Settings

    root = Path(args.root).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="peftlab-bench-grading-"))
    try:
        make_class(root, args.assignment, args.n, tmp / "class")
        load_before = os.getloadavg()
        busy = record.busy_cores()  # others' work right now (the load average still counts earlier runs)
        plain_seconds = plain_nbgrader(root, args.assignment, tmp / "class", tmp, Settings().cell_timeout)
        runs = {"plain": {"workers": 1, "seconds": round(plain_seconds, 2),
                          "per_minute": round(60 * args.n / plain_seconds, 2), "statuses": [], "csv": ""}}
        labels = [("sequential", 1), ("parallel", args.workers)] + ([("dask", args.workers)] if args.cluster else [])
        for label, workers in labels:
            settings = Settings(workers=workers)
            batch = Batch(root, args.assignment, tmp / f"work-{label}", settings, log=lambda *a: None,
                          cluster=f"local:{workers}" if label == "dask" else "")
            start = time.perf_counter()
            # Once per class, not per submission: the scratch course and gradebook, the fork server's
            # imports, the solution run through the probes (cached for reruns of the class).
            batch.prepare()
            setup = time.perf_counter() - start
            start = time.perf_counter()
            results = batch.run([tmp / "class"])
            # The solution's run through the probes for this class's seeds is once per class too: it runs
            # inside `run`, once the class (and so its seeds) is known, and is counted with the set-up.
            seconds = time.perf_counter() - start - batch.solution_seconds
            runs[label] = {"workers": workers, "seconds": round(seconds, 2), "setup_seconds": round(setup, 2),
                           "solution_seconds": round(batch.solution_seconds, 2),
                           "per_minute": round(60 * len(results) / seconds, 2),
                           "statuses": sorted({o.status for _, o in results}),
                           "profile": profile(results, seconds, workers),
                           "csv": batch.csv_path.read_text()}
        load_after = os.getloadavg()
        same = runs["sequential"]["csv"] == runs["parallel"]["csv"] == runs.get("dask", runs["parallel"])["csv"]
        ratio = runs["sequential"]["seconds"] / runs["parallel"]["seconds"]
        one_vs_plain = runs["sequential"]["seconds"] / plain_seconds  # target <= 1.25
        all_vs_plain = plain_seconds / runs["parallel"]["seconds"]  # throughput, target >= 1.6
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    hw = record.hardware()
    print(f"grading {args.n} submissions of {args.assignment} on {os.cpu_count()} cores "
          f"({'bubblewrap sandbox' if sandbox.bwrap_path() else 'NO sandbox'}):")
    names = {"plain": "plain nbgrader", "sequential": "peftlab-grade", "parallel": "peftlab-grade",
             "dask": "  on Dask"}
    for label, r in runs.items():
        setup = (f" (+ {r['setup_seconds'] + r.get('solution_seconds', 0):.1f} s once per class)"
                 if "setup_seconds" in r else "")
        print(f"  {names[label]:<15} {r['workers']} worker(s): {r['seconds']:7.1f} s, "
              f"{r['per_minute']:5.2f} submissions/min{setup}")
    print(f"  1 worker vs plain nbgrader: {one_vs_plain:.2f}x the time (target <= 1.25: "
          f"{'met' if one_vs_plain <= 1.25 else 'NOT met'})")
    print(f"  {args.workers} workers vs plain nbgrader: {all_vs_plain:.2f}x the throughput (target >= 1.6: "
          f"{'met' if all_vs_plain >= 1.6 else 'NOT met'})")
    print(f"  speed-up of {args.workers} workers over 1: {ratio:.2f}x; grades identical: {same}")
    dask_ratio = None
    if "dask" in runs:  # the cluster's start (processes, imports, fork servers) is in its time: paid once a class
        dask_ratio = runs["dask"]["seconds"] / runs["parallel"]["seconds"]
        overhead = (runs["dask"]["seconds"] - runs["parallel"]["seconds"]) / args.n
        print(f"  Dask local:{args.workers} vs the fork server, {args.workers} workers: {dask_ratio:.2f}x the time "
              f"(target <= 1.2: {'met' if dask_ratio <= 1.2 else 'NOT met'}); the engine's overhead "
              f"{overhead:+.2f} s per submission, the cluster's start included")
    print("  where one submission's time goes (seconds, mean; 1 worker; worker_start: forking the worker, its start and exit):")
    for step, sec in runs["sequential"]["profile"].items():
        print(f"    {step:<15} {sec:7.2f}")
    shared = busy is not None and busy > 0.3
    print(f"  {busy if busy is not None else '?'} cores busy with other work before the run; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after"
          + (": MEASURED WHILE OTHERS SHARED THE MACHINE" if shared else " (the machine was idle before)"))
    out = Path(args.out)
    rec = {"commit": record.git_commit(), "assignment": args.assignment, "n": args.n, "hardware": hw,
           "versions": record.versions(),
           "ratio": round(ratio, 3), "identical": same, "one_worker_vs_plain_time": round(one_vs_plain, 3),
           "all_workers_vs_plain_throughput": round(all_vs_plain, 3),
           "dask_vs_fork_server_time": dask_ratio and round(dask_ratio, 3),
           "load_average": {"before": load_before, "after": load_after, "shared": shared},
           "busy_cores_before": busy,
           "runs": {k: {kk: vv for kk, vv in v.items() if kk != "csv"} for k, v in runs.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
