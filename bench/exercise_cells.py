"""The slowest cell of every exercise, as grading runs it: each solution notebook, cell by cell, on this machine.

    python bench/exercise_cells.py [--only 02] [--out runs/bench/exercise_cells.json]

Grading (nbgrader's autograde, JupyterLab's Validate, `peftlab-grade`) stops
any cell that runs past its per-cell limit, and a cell stopped early fails
every test after it that needs what it builds. The course keeps every cell of
every exercise at or below BUDGET_S on a 2-core machine with the tiny model,
a 3x margin under the 180 s per-cell limit of `peftlab-grade`; Validate's
limit (exercises/nbgrader_config.py) is set from the same budget.

Each notebook runs in a scratch copy of its folder with nbclient and the
notebook's own parameters; a cell's time is the kernel's execute_input to
execute_reply (nbclient's timing metadata), so kernel start is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 60


def _seconds(cell) -> float:
    timing = cell.metadata.get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    parse = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def cell_times(notebook: Path, timeout: int = 900) -> list[dict]:
    """Run `notebook` in a scratch copy of its folder; one row per code cell: index, grade id, seconds."""
    import nbformat
    from nbclient import NotebookClient

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / notebook.parent.name
        shutil.copytree(notebook.parent, work)
        nb = nbformat.read(work / notebook.name, as_version=4)
        NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=True,
                       resources={"metadata": {"path": str(work)}}).execute()
    rows = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        meta = cell.metadata.get("nbgrader", {})
        kind = "test" if meta.get("grade") else "solution" if meta.get("solution") else "given"
        rows.append({"cell": i, "grade_id": meta.get("grade_id", ""), "kind": kind,
                     "first_line": cell.source.splitlines()[0][:60] if cell.source else "",
                     "seconds": round(_seconds(cell), 2)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=str(ROOT), help="course root holding solutions/")
    parser.add_argument("--only", default="", help="run only assignments whose name contains this text")
    parser.add_argument("--out", default="runs/bench/exercise_cells.json")
    args = parser.parse_args(argv)

    from peftlab import record
    from peftlab.tiny import ensure_tiny_model

    ensure_tiny_model()  # built once per cache (about 2 minutes); grading machines build it before grading
    out_rows, over = [], []
    for nb in sorted(Path(args.root).glob("solutions/*/*.ipynb")):
        if args.only not in nb.parent.name:
            continue
        start = time.perf_counter()
        cells = cell_times(nb)
        slowest = max(cells, key=lambda c: c["seconds"])
        out_rows.append({"assignment": nb.parent.name, "slowest": slowest, "cells": cells,
                         "notebook_s": round(time.perf_counter() - start, 1)})
        print(f"{nb.parent.name:<22} slowest cell {slowest['seconds']:6.1f} s  (cell {slowest['cell']}, "
              f"{slowest['kind']} {slowest['grade_id'] or slowest['first_line']!r}); whole notebook "
              f"{out_rows[-1]['notebook_s']:.1f} s", flush=True)
        if slowest["seconds"] > BUDGET_S:
            over.append(nb.parent.name)
    print(f"budget {BUDGET_S} s per cell: " + (f"OVER in {', '.join(over)}" if over else "every cell within"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"hardware": record.hardware(), "cpu_count": os.cpu_count(),
                               "loadavg": os.getloadavg(), "versions": record.versions(), "budget_s": BUDGET_S,
                               "notebooks": out_rows}, indent=2))
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
