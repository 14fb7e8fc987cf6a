"""Notebook hygiene: committed notebooks are source, so they must be clean.

    python -m peftlab.notebooks check [ROOT]   # CI gate, exit 1 on any problem
    python -m peftlab.notebooks strip FILE...  # remove outputs, keep tags + nbgrader
    python -m peftlab.notebooks setup-cells --write|--check [ROOT]
        # the Colab setup cell, badges and README links, from pyproject's
        # [project.urls] Repository (peftlab.colab); --check is a CI gate

Rules: valid nbformat 4; no outputs or execution counts; a python3
kernelspec (papermill and nbgrader need one); every notebook under
sessions/, solutions/ or exercises/ has exactly one cell tagged `parameters`;
every notebook under solutions/ or exercises/ carries nbgrader metadata.
Stripping keeps cell `tags` and `nbgrader` metadata: tools that strip all
cell metadata silently delete both.
"""

from __future__ import annotations

import sys
from pathlib import Path

SKIP_DIRS = {".venv", ".venv-min", ".git", ".ipynb_checkpoints", "runs", "node_modules", "autograded", "submitted", "feedback", "work"}
NEEDS_PARAMETERS = ("sessions", "solutions", "exercises")
NEEDS_NBGRADER = ("solutions", "exercises")


def find_notebooks(root: str | Path) -> list[Path]:
    root = Path(root)
    return sorted(
        p for p in root.rglob("*.ipynb") if not SKIP_DIRS & set(p.relative_to(root).parts[:-1])
    )


def problems(path: str | Path, root: str | Path | None = None) -> list[str]:
    """Everything wrong with one notebook, as 'path: problem' strings."""
    import nbformat

    path = Path(path)
    parts = set(path.relative_to(root).parts) if root else set(path.parts)
    try:
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    except Exception as exc:  # nbformat raises several JSON / schema errors
        return [f"{path}: not a readable notebook ({type(exc).__name__}: {exc})"]
    out = []
    if nb.get("nbformat") != 4:
        return [f"{path}: nbformat {nb.get('nbformat')} (need 4)"]
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        out.append(f"{path}: invalid nbformat 4 ({exc.message})")
    kernel = nb.metadata.get("kernelspec", {})
    if kernel.get("name") != "python3" or kernel.get("language", "python") != "python":
        out.append(f"{path}: kernelspec must be python3 (found {kernel or 'none'})")
    n_params = 0
    has_nbgrader = False
    for i, cell in enumerate(nb.cells):
        if cell.get("cell_type") == "code" and (cell.get("outputs") or cell.get("execution_count")):
            out.append(f"{path}: cell {i} has outputs; run `python -m peftlab.notebooks strip {path}`")
        n_params += "parameters" in cell.get("metadata", {}).get("tags", [])
        has_nbgrader |= "nbgrader" in cell.get("metadata", {})
    if parts & set(NEEDS_PARAMETERS) and n_params != 1:
        out.append(f"{path}: needs exactly one cell tagged 'parameters' (found {n_params})")
    if parts & set(NEEDS_NBGRADER) and not has_nbgrader:
        out.append(f"{path}: no nbgrader cell metadata (graded cells lost their metadata?)")
    return out


def strip(path: str | Path) -> None:
    """Remove outputs and execution counts in place; keep all cell metadata."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        for key in ("execution", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
    nbformat.write(nb, path)


def setup_cells(argv: list[str]) -> int:
    """`setup-cells --write|--check [ROOT]`: see peftlab.colab."""
    from .colab import ColabConfigError, sync

    modes = [a for a in argv if a in ("--write", "--check")]
    rest = [a for a in argv if a not in modes]
    if len(modes) != 1 or len(rest) > 1:
        print("usage: python -m peftlab.notebooks setup-cells --write|--check [ROOT]")
        return 2
    write = modes[0] == "--write"
    try:
        stale = sync(rest[0] if rest else ".", write=write)
    except ColabConfigError as exc:
        print(exc)
        return 1
    for path in stale:
        print(f"{path}: {'rewritten' if write else 'Colab setup cell or links out of date'}")
    if stale and not write:
        print("run `python -m peftlab.notebooks setup-cells --write`, then "
              "`python -m peftlab.grader.exercises release` (exercises/ come from solutions/)")
        return 1
    print(f"setup cells: {len(stale)} file(s) {'rewritten' if write else 'out of date'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "setup-cells":
        return setup_cells(argv[1:])
    if not argv or argv[0] not in ("check", "strip"):
        print(__doc__)
        return 2
    if argv[0] == "strip":
        for p in argv[1:]:
            strip(p)
        return 0
    root = Path(argv[1] if len(argv) > 1 else ".")
    notebooks = find_notebooks(root)
    found = [msg for nb in notebooks for msg in problems(nb, root)]
    for msg in found:
        print(msg)
    print(f"notebook hygiene: {len(notebooks)} notebooks, {len(found)} problems")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
