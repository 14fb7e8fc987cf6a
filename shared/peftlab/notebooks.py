"""Notebook hygiene: committed notebooks are source, so they must be clean.

    python -m peftlab.notebooks check [ROOT]   # CI gate, exit 1 on any problem
    python -m peftlab.notebooks strip FILE...  # remove outputs, keep tags + nbgrader
    python -m peftlab.notebooks setup-cells --write|--check [ROOT]
        # the Colab setup cell, badges and README links, from pyproject's
        # [project.urls] Repository (peftlab.colab); --check is a CI gate
    python -m peftlab.notebooks publish-check [ROOT]
        # exit 1 until the repository URL is set (it says what --write will
        # generate), then 1 while any generated part is out of date

Rules: valid nbformat 4; no outputs or execution counts; a python3
kernelspec (papermill and nbgrader need one); every notebook under
sessions/, solutions/ or exercises/ has exactly one cell tagged `parameters`;
every notebook under solutions/ or exercises/ carries nbgrader metadata.
Stripping keeps cell `tags` and `nbgrader` metadata: tools that strip all
cell metadata silently delete both.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from .colab import BADGE_TAG, SETUP_TAG, ColabConfigError, badge, repository_url, setup_cell_source

SKIP_DIRS = {".venv", ".venv-min", ".venv-colab", ".git", ".ipynb_checkpoints", "runs", "node_modules", "autograded", "submitted", "feedback", "work"}
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


# ------------------------------------------ the generated Colab parts (peftlab.colab)
def _repo_path(root: Path, path: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def _student_path(rel: str) -> str:
    """Students open the released copy: solutions/X -> exercises/X."""
    return "exercises/" + rel.removeprefix("solutions/") if rel.startswith("solutions/") else rel


def _find_setup_cell(nb) -> int | None:
    for i, cell in enumerate(nb.cells):
        if SETUP_TAG in cell.get("metadata", {}).get("tags", []):
            return i
    # First run: the hand-written cell this generator replaces.
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and cell.source.lstrip().startswith("# Setup"):
            return i
    return None


def render_notebook(nb, url: str | None, rel: str) -> None:
    """Put the generated setup cell (and, with a URL, the badge cell above it) into `nb`, in place."""
    import nbformat

    i = _find_setup_cell(nb)
    if i is None:
        raise ColabConfigError(
            f"{rel}: no setup cell (a code cell tagged '{SETUP_TAG}'); add an empty code cell with that tag "
            "after the title cell and run `python -m peftlab.notebooks setup-cells --write`."
        )
    cell = nb.cells[i]
    cell.source = setup_cell_source(url)
    tags = cell.metadata.setdefault("tags", [])
    if SETUP_TAG not in tags:
        tags.append(SETUP_TAG)
    has_badge = i > 0 and BADGE_TAG in nb.cells[i - 1].get("metadata", {}).get("tags", [])
    if url is None:
        if has_badge:
            del nb.cells[i - 1]
        return
    text = badge(url, _student_path(rel))
    if has_badge:
        nb.cells[i - 1].source = text
    else:
        new = nbformat.v4.new_markdown_cell(text, metadata={"tags": [BADGE_TAG]})
        new["id"] = hashlib.sha1(f"{rel}:{BADGE_TAG}".encode()).hexdigest()[:8]  # stable: reruns change nothing
        nb.cells.insert(i, new)


MARKERS = ("<!-- colab:start -->", "<!-- colab:end -->")


def readme_block(url: str | None, notebooks: list[str]) -> str:
    if url is None:
        return ("Colab links appear here once the course's repository URL is set in pyproject.toml "
                "(`[project.urls] Repository`) and `python -m peftlab.notebooks setup-cells --write` has run.")
    rows = [f"| `{p}` | {badge(url, p)} |" for p in notebooks]
    return "\n".join(["| notebook | open |", "|---|---|", *rows])


def render_readme(text: str, block: str) -> str:
    start, end = MARKERS
    a, b = text.index(start) + len(start), text.index(end)
    return text[:a] + "\n" + block + "\n" + text[b:]


def _readmes(root: Path) -> list[Path]:
    """READMEs holding the Colab links' markers."""
    return [p for p in sorted(root.glob("**/README.md"))
            if not SKIP_DIRS & set(p.relative_to(root).parts) and MARKERS[0] in p.read_text()]


def sync(root: str | Path = ".", write: bool = False) -> list[str]:
    """Files whose generated Colab parts are out of date (rewritten when `write`)."""
    import nbformat

    root = Path(root)
    url = repository_url(root / "pyproject.toml")
    stale = []
    student_notebooks = []
    for path in find_notebooks(root):
        rel = _repo_path(root, path)
        top = rel.split("/", 1)[0]
        if top not in ("sessions", "solutions"):
            continue  # exercises/ is generated from solutions/ by `python -m peftlab.grader.exercises release`
        student_notebooks.append(_student_path(rel))
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        before = nbformat.writes(nb)
        render_notebook(nb, url, rel)
        if nbformat.writes(nb) != before:
            stale.append(rel)
            if write:
                nbformat.write(nb, path)
    block = readme_block(url, student_notebooks)
    for path in _readmes(root):
        text = path.read_text()
        new = render_readme(text, block)
        if new != text:
            stale.append(_repo_path(root, path))
            if write:
                path.write_text(new)
    return stale


def setup_cells(argv: list[str]) -> int:
    """`setup-cells --write|--check [ROOT]`: see peftlab.colab."""
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


def publish_plan(root: str | Path = ".") -> list[str]:
    """What `setup-cells --write` generates from the repository URL: one line per notebook and README."""
    root = Path(root)
    lines = []
    for path in find_notebooks(root):
        rel = _repo_path(root, path)
        if rel.split("/", 1)[0] in ("sessions", "solutions"):
            lines.append(f"{rel}: COURSE_URL in its setup cell, and a Colab badge opening {_student_path(rel)}")
    for path in _readmes(root):
        lines.append(f"{_repo_path(root, path)}: the Colab links between {MARKERS[0]} and {MARKERS[1]}")
    return lines


def publish_check(argv: list[str]) -> int:
    """`publish-check [ROOT]`: fails until the course's URL is set, and says what setting it generates."""
    root = Path(argv[0] if argv else ".")
    try:
        url = repository_url(root / "pyproject.toml")
    except ColabConfigError as exc:
        print(exc)
        return 1
    plan = publish_plan(root)
    if url is None:
        print("not publishable yet: pyproject.toml has no [project.urls] Repository, so on Colab every notebook's "
              "setup cell asks the student for the URL. Set it (Repository = \"https://github.com/OWNER/REPO\"), "
              f"then `python -m peftlab.notebooks setup-cells --write` generates, in {len(plan)} files:")
        print("\n".join(f"  {line}" for line in plan))
        print("then `python -m peftlab.grader.exercises release` copies the solutions' cells to exercises/.")
        return 1
    stale = sync(root, write=False)
    if stale:
        print(f"{url} is set, but {len(stale)} file(s) do not use it yet: {', '.join(stale)}; "
              "run `python -m peftlab.notebooks setup-cells --write`.")
        return 1
    print(f"publishable: {len(plan)} files point at {url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "setup-cells":
        return setup_cells(argv[1:])
    if argv and argv[0] == "publish-check":
        return publish_check(argv[1:])
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
