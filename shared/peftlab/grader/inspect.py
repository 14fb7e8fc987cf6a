"""Check a submitted notebook before anything else reads it. Runs no student code.

In this order, each step trusting only what the previous one proved: size,
JSON nesting depth, JSON (`read_json`, which every reader of a submission uses), nbformat 4's schema, the schema of the nbgrader
metadata the course uses (`NBGRADER_SCHEMA`), then the graded cells against the
release: none deleted, renamed, retyped, duplicated or added, no test cell
made editable, no points changed. `guard` turns any exception of a check
(RecursionError and MemoryError included) into the file's reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import TypeVar

from .settings import Settings

T = TypeVar("T")

# nbgrader's cell metadata as the course's notebooks use it (nbgrader schema version 3).
NBGRADER_SCHEMA = {
    "type": "object",
    "properties": {
        "grade_id": {"type": "string", "pattern": r"^[A-Za-z0-9_\-]{1,100}$"},
        "grade": {"type": "boolean"},
        "solution": {"type": "boolean"},
        "locked": {"type": "boolean"},
        "task": {"type": "boolean"},
        "points": {"type": "number", "minimum": 0, "maximum": 1000},
        "schema_version": {"type": "integer"},
        "checksum": {"type": "string", "maxLength": 200},
        "cell_type": {"enum": ["code", "markdown", "raw"]},
    },
}


@dataclass
class Verdict:
    """'' status for a gradable notebook; else 'invalid' or 'tampered' and a reason naming cell and fix."""

    status: str = ""
    reason: str = ""
    notes: list[str] = field(default_factory=list)


def json_depth(text: str) -> int:
    """Deepest nesting of arrays and objects in JSON text (strings skipped), without parsing it."""
    skeleton = re.sub(r'"(?:[^"\\]|\\.)*"', "", text)
    steps = (1 if ch in "[{" else -1 for ch in skeleton if ch in "[]{}")
    return max(accumulate(steps, initial=0))


def graded_cells(nb: dict) -> tuple[dict[str, tuple[int, dict]], dict[str, list[int]]]:
    """({grade_id: (index, cell)} of the first cell with each id, {grade_id: [indices]} of every cell).

    Expects metadata already checked against NBGRADER_SCHEMA."""
    first, where = {}, {}
    for i, cell in enumerate(nb.get("cells", [])):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        gid = meta.get("grade_id")
        if gid and (meta.get("grade") or meta.get("solution") or meta.get("locked")):
            where.setdefault(gid, []).append(i)
            first.setdefault(gid, (i, cell))
    return first, where


def _role(meta: dict) -> str:
    if meta.get("grade") and not meta.get("solution"):
        return "test" if meta.get("locked", True) else "graded"
    if meta.get("solution"):
        return "answer"
    return "read-only"


def _schema_problem(nb: dict) -> str:
    import jsonschema

    validator = jsonschema.Draft7Validator(NBGRADER_SCHEMA)
    for i, cell in enumerate(nb["cells"]):
        meta = cell.get("metadata", {})
        if "nbgrader" not in meta:
            continue
        error = jsonschema.exceptions.best_match(validator.iter_errors(meta["nbgrader"]))
        if error is not None:
            where = "".join(f"[{p!r}]" for p in error.absolute_path)
            return (f"cell {i + 1}: its grading metadata (metadata.nbgrader{where}) is malformed: "
                    f"{error.message[:200]}; start again from the released notebook and copy your answers over")
    return ""


def add_cell_ids(nb: dict) -> int:
    """Give cells without an `id` one, as nbformat's `normalize` does for nbformat 4.5 and later (which
    requires ids; older editors and hand-made notebooks leave them out). Deterministic (`cell-<n>`, unique in
    the notebook), so a notebook checked twice is the same. How many were added."""
    cells = nb.get("cells")
    if type(nb.get("nbformat_minor")) is not int or nb["nbformat_minor"] < 5 or not isinstance(cells, list):
        return 0
    taken = {c["id"] for c in cells if isinstance(c, dict) and isinstance(c.get("id"), str)}  # others: the schema's
    added = 0
    for n, cell in enumerate(cells):
        if isinstance(cell, dict) and "id" not in cell:
            new = f"cell-{n}"
            while new in taken:
                new += "-"
            cell["id"] = new
            taken.add(new)
            added += 1
    return added


def guard(what: str, fn: Callable[..., T], *args, **kwargs) -> tuple[T | None, str]:
    """(fn(*args, **kwargs), '') or (None, why): any exception of one file's check becomes a reason.

    Every step that reads a submission (repair, inspection, and the rest of the checks) runs under it, so
    one malformed file is that file's `invalid` status and never stops the class. RecursionError and
    MemoryError are exceptions like any other here: a notebook nested or sized to exhaust the parser is
    exactly what a hostile class sends."""
    try:
        return fn(*args, **kwargs), ""
    except RecursionError:
        return None, f"{what} failed: the file nests too deep to read; download the notebook again from Jupyter"
    except MemoryError:
        return None, f"{what} failed: the file needs more memory than the grader gives one notebook"
    except Exception as exc:  # noqa: BLE001 - whatever a file does to a parser, it is that file's problem
        return None, f"{what} failed ({type(exc).__name__}: {str(exc)[:200]}); download the notebook again"


def read_json(path: str | Path, settings: Settings | None = None) -> tuple[object, str]:
    """(parsed JSON, '') of a submitted file within the size and depth limits, else (None, why).

    Size, UTF-8 and nesting depth are checked before parsing: json.loads recurses, and a few KB of
    brackets would otherwise raise RecursionError in whatever reads the file first."""
    settings = settings or Settings()
    with open(path, "rb") as fh:
        data = fh.read(settings.max_notebook_bytes + 1)
    if len(data) > settings.max_notebook_bytes:
        return None, f"notebook too large (over {settings.max_notebook_bytes:,} bytes, the limit)"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        return None, f"the file is not UTF-8 text (line {line}); upload the .ipynb file itself"
    depth = json_depth(text)
    if depth > settings.max_json_depth:
        return None, (f"not a notebook: its JSON nests {depth} levels deep (limit {settings.max_json_depth}); "
                      "download the notebook again from Jupyter or Colab")
    try:
        return json.loads(text), ""
    except json.JSONDecodeError as exc:
        return None, (f"not valid notebook JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                      "download the notebook again from Jupyter or Colab")
    except RecursionError:
        return None, "not a notebook: its JSON nests too deep to read"


def load(path: str | Path, settings: Settings | None = None) -> tuple[dict | None, str]:
    """(notebook dict, '') for a valid nbformat 4 notebook with well-formed nbgrader metadata, else (None, why)."""
    import nbformat
    from nbformat.validator import get_validator

    nb, problem = read_json(path, settings)
    if problem:
        return None, problem
    if not isinstance(nb, dict) or "nbformat" not in nb:
        return None, "not a Jupyter notebook (no nbformat field)"
    if nb.get("nbformat") != 4:
        return None, (f"nbformat {nb.get('nbformat')!r} is not supported; save it as nbformat 4 "
                      "(Jupyter and Colab do by default)")
    minor = nb.get("nbformat_minor")
    if type(minor) is not int or not 0 <= minor <= nbformat.v4.nbformat_minor:
        return None, f"nbformat_minor {minor!r} is not a known nbformat 4 version; save the notebook again in Jupyter"
    add_cell_ids(nb)
    # The schema alone: nbformat.validate() first "normalizes" the notebook and crashes on malformed ones.
    error = next(iter(get_validator(version=4, version_minor=minor).iter_errors(nb)), None)
    if error is not None:
        where = "/".join(map(str, getattr(error, "absolute_path", []) or []))
        return None, f"not a valid nbformat 4 notebook (at {where or 'top level'}: {str(error.message)[:200]})"
    problem = _schema_problem(nb)
    return (None, problem) if problem else (nb, "")


def inspect(path: str | Path, release: str | Path, settings: Settings | None = None) -> Verdict:
    """Whether a submission can be graded, and if not, why: see the module docstring. Never raises."""
    verdict, problem = guard("checking the notebook", _inspect, path, release, settings)
    return verdict if verdict is not None else Verdict("invalid", problem)


def _inspect(path: str | Path, release: str | Path, settings: Settings | None = None) -> Verdict:
    nb, problem = load(path, settings)
    if nb is None:
        return Verdict("invalid", problem)
    expected, _ = graded_cells(json.loads(Path(release).read_text()))
    got, where = graded_cells(nb)
    problems, notes = [], []

    dups = {gid: idx for gid, idx in where.items() if len(idx) > 1}
    if dups:
        listed = "; ".join(f"{gid!r} in cells {', '.join(str(i + 1) for i in idx)}" for gid, idx in dups.items())
        return Verdict("invalid", f"duplicate grade ids: {listed}. A cell copied in Jupyter keeps its grading "
                                  "metadata: delete the copies (or move your answer into the original) and resubmit")
    missing = [gid for gid in expected if gid not in got]
    if missing:
        problems.append(f"graded cell(s) deleted or renamed: {', '.join(missing)}")
    extra = [gid for gid in got if gid not in expected]
    for gid in extra:
        i, cell = got[gid]
        meta = cell["metadata"]["nbgrader"]
        problems.append(f"extra graded cell {gid!r} (cell {i + 1}, {_role(meta)}, {meta.get('points', 0):g} points) "
                        "that the assignment does not have")
    for gid, (_, cell) in expected.items():
        if gid not in got:
            continue
        i, mine = got[gid]
        want, have = cell["metadata"]["nbgrader"], mine["metadata"]["nbgrader"]
        if mine.get("cell_type") != cell["cell_type"]:
            problems.append(f"cell {gid} changed from {cell['cell_type']} to {mine.get('cell_type')}")
            continue
        if _role(want) != _role(have):
            problems.append(f"cell {gid} was turned from a {_role(want)} cell into a{'n' if _role(have)[0] in 'aeiou' else ''} "
                            f"{_role(have)} cell")
        elif float(want.get("points", 0)) != float(have.get("points", 0)) and want.get("grade"):
            problems.append(f"points of {gid} changed from {want.get('points', 0):g} to {have.get('points', 0):g}")
        elif want.get("locked") and "".join(mine.get("source", "")) != "".join(cell["source"]):
            notes.append(f"edited locked cell {gid} was restored from the release")
    if problems:
        return Verdict("tampered", "; ".join(problems), notes)
    return Verdict("", "", notes)


def new_cell_id(nb, base: str) -> str:
    """A cell id for a cell the grader adds to `nb`: `base`, made unique among the notebook's ids. Fixed, not
    nbformat's random one, so the same submission graded twice (here or on a cluster) gives the same page."""
    taken = {c.get("id") for c in nb.cells}
    new = base
    while new in taken:
        new += "-"
    return new
