"""How far a notebook got: the cell running when grading was stopped, and the cells before it.

A submission stopped at the wall limit has no graded notebook (nbgrader writes
it at the end), so its feedback would be a status line. While it runs, the
grader's `GuardedExecute` appends each of the student's cells to the worker's
findings file as it starts (`started`) and ends (`finished`), with its
outputs. `partial_notebook` rebuilds from them the notebook up to the cell that
was running, marked, for `feedback.write_feedback`, which treats it as any
graded notebook (hidden tests' code removed, outputs scrubbed and sanitised).

The grader's own cells are never written down: a probe or a canary running at
the limit is named as such, its code and outputs left out.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat


def report(findings: str, **entry) -> None:
    """One JSON line appended to the worker's findings file (the format `preprocessors.report` writes)."""
    if findings:
        with open(findings, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")


def read_findings(findings: str) -> list[dict]:
    try:
        with open(findings, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return []


STOPPED = "Grading was stopped here: this cell was still running when the {limit} s limit for the whole notebook ran out."


def _ours(cell) -> str:
    """'a grading probe' / 'a canary test' for the grader's own cells, '' for the student's."""
    meta = cell.get("metadata", {}).get("peftlab", {})
    return "a grading probe" if meta.get("probe") else "a canary test" if meta.get("canary") else ""


def label(cell, number: int) -> str:
    """How the feedback names a cell: its grade id, else its number and first line."""
    gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
    first = next((ln.strip() for ln in "".join(cell.get("source", "")).splitlines() if ln.strip()), "")
    first = first if len(first) <= 60 else first[:57] + "..."
    return f"cell {number}" + (f" ({gid})" if gid else f" (`{first}`)" if first else "")


def _number(nb, index: int) -> int:
    """1-based position of cell `index` among the notebook's own cells (injected ones not counted)."""
    return 1 + sum(1 for c in nb.cells[:index] if not _ours(c)
                   and "injected-parameters" not in c.get("metadata", {}).get("tags", []))


def started(findings: str, nb, index: int) -> None:
    cell = nb.cells[index]
    ours = _ours(cell)
    if ours:
        report(findings, kind="running", index=index, label=ours)
    else:
        report(findings, kind="running", index=index, label=label(cell, _number(nb, index)),
               cell={k: cell.get(k) for k in ("cell_type", "source", "metadata")})


def finished(findings: str, nb, index: int) -> None:
    cell = nb.cells[index]
    if not _ours(cell):
        report(findings, kind="ran", index=index, cell=json.loads(json.dumps(cell, default=str)))


def partial_notebook(findings: str | Path, dest: Path, limit: int) -> tuple[Path | None, str]:
    """(the notebook as far as it ran, ending with the cell that was running, marked; the running cell's label),
    or (None, '') when nothing was recorded (stopped before the first cell)."""
    entries = read_findings(str(findings))
    ran = [e for e in entries if e.get("kind") == "ran"]
    running = [e for e in entries if e.get("kind") == "running"]
    if not running:
        return None, ""
    last = running[-1]
    cells = [nbformat.from_dict(e["cell"]) for e in ran if e.get("index", -1) < last["index"]]
    if not any(e.get("index") == last["index"] for e in ran):  # the one still running when stopped
        cell = nbformat.from_dict({**(last.get("cell") or {"cell_type": "code", "source": f"# {last['label']}",
                                                           "metadata": {}}), "outputs": []})
        if cell.cell_type == "code":
            cell.execution_count = None
            cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text=STOPPED.format(limit=limit))]
        cells.append(cell)
    nb = nbformat.v4.new_notebook(cells=[])
    for i, cell in enumerate(cells):
        cell["id"] = f"cell-{i}"
        if cell.cell_type == "code":
            cell.setdefault("outputs", [])
            cell.setdefault("execution_count", None)
        nb.cells.append(cell)
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)
    return dest, last["label"]
