"""Grading throughput: submissions per minute, one worker against N, on this machine.

    python bench/grading.py [--assignment 05_custom_dataset] [--n 8] [--workers N]

Builds a class of `n` submissions of one assignment (alternately the solution
filled into the student notebook and the untouched notebook), grades it with
one worker and then with N (default: the number of cores), each into a fresh
grading folder with the sandbox on when bubblewrap is installed, and prints
submissions per minute for both, the ratio, and whether the two grade CSVs are
identical. Writes a JSON record to runs/bench/grading.json.
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
    from peftlab.grader.exercises import fill_solutions

    solved = fill_solutions(root, assignment)
    blank = fill_solutions(root, assignment, only=set())
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        nbformat.write(solved if i % 2 == 0 else blank, dest / f"student{i:03d}.ipynb")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="course root")
    parser.add_argument("--assignment", default="05_custom_dataset")
    parser.add_argument("--n", type=int, default=8, help="submissions in the class")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default="runs/bench/grading.json")
    args = parser.parse_args(argv)

    from peftlab import record
    from peftlab.grader import sandbox
    from peftlab.grader.batch import Batch
    from peftlab.grader.settings import Settings

    root = Path(args.root).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="peftlab-bench-grading-"))
    try:
        make_class(root, args.assignment, args.n, tmp / "class")
        runs = {}
        for label, workers in (("sequential", 1), ("parallel", args.workers)):
            settings = Settings(workers=workers)
            batch = Batch(root, args.assignment, tmp / f"work-{label}", settings, log=lambda *a: None)
            batch.prepare()  # course set-up is not part of the per-submission cost
            start = time.perf_counter()
            results = batch.run([tmp / "class"])
            seconds = time.perf_counter() - start
            runs[label] = {"workers": workers, "seconds": round(seconds, 2),
                           "per_minute": round(60 * len(results) / seconds, 2),
                           "statuses": sorted({o.status for _, o in results}),
                           "csv": batch.csv_path.read_text()}
        same = runs["sequential"]["csv"] == runs["parallel"]["csv"]
        ratio = runs["sequential"]["seconds"] / runs["parallel"]["seconds"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    hw = record.hardware()
    print(f"grading {args.n} submissions of {args.assignment} on {os.cpu_count()} cores "
          f"({'bubblewrap sandbox' if sandbox.bwrap_path() else 'NO sandbox'}):")
    for label, r in runs.items():
        print(f"  {label:<10} {r['workers']} worker(s): {r['seconds']:7.1f} s, {r['per_minute']:5.2f} submissions/min")
    print(f"  speed-up {ratio:.2f}x; grades identical: {same}")
    out = Path(args.out)
    rec = {"assignment": args.assignment, "n": args.n, "hardware": hw, "versions": record.versions(),
           "ratio": round(ratio, 3), "identical": same,
           "runs": {k: {kk: vv for kk, vv in v.items() if kk != "csv"} for k, v in runs.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
