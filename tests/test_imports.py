"""The package's import graph, read from the source (ast, every import, function-local ones included).

`peftlab/__init__.py` documents the modules in layers; a module imports only from its own layer or the
layers above it, and nothing imports in a circle. A cycle hidden in a function-local import fails here,
named, as does a module missing from the documented layers.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import peftlab

PACKAGE = Path(peftlab.__file__).resolve().parent

# Cycles allowed to stand (none): a new one fails the test below.
EXEMPT: set = set()


def _name(path: Path) -> str:
    """`grader.batch` for peftlab/grader/batch.py; `` for peftlab/__init__.py."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the package's modules it imports}, module names relative to `peftlab`."""
    modules = {_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
                elif (node.module or "").split(".")[0] == "peftlab":
                    base = node.module.removeprefix("peftlab").lstrip(".")
                else:
                    continue
                targets = [f"{base}.{a.name}".lstrip(".") for a in node.names] + [base]
            elif isinstance(node, ast.Import):
                targets = [a.name.removeprefix("peftlab").lstrip(".") for a in node.names
                           if a.name.split(".")[0] == "peftlab"]
            else:
                continue
            for target in targets:
                if target in modules:  # `from . import x` names a module; `from .x import f` names x
                    found.add(target)
                    break
        found.discard(name)
        graph[name] = {m for m in found if m and not name.startswith(m + ".")}  # a package's own __init__
    return graph


def layers() -> list[set[str]]:
    """The layers documented in `peftlab/__init__.py`: lines `N. module, module, ...`."""
    doc = peftlab.__doc__ or ""
    return [set(re.findall(r"[a-z_]+", line.split("  ")[0].split(".", 1)[1]))
            for line in doc.splitlines() if re.match(r"^\d+\. ", line)]


def _top(module: str) -> str:
    return module.split(".")[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_no_module_imports_in_a_circle():
    found = [c for c in cycles(import_graph()) if frozenset(c) not in EXEMPT]
    assert not found, f"import cycles (function-local imports count): {found}"


def test_the_documented_layer_order_is_the_import_order():
    where = {m: i for i, layer in enumerate(layers()) for m in layer}
    graph = import_graph()
    modules = {_top(m) for m in graph if m}
    assert not modules - set(where), f"modules missing from the layers in peftlab/__init__.py: {modules - set(where)}"
    upward = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                    if m and t and _top(m) != _top(t) and where[_top(t)] > where[_top(m)])
    assert not upward, f"imports from a later layer than peftlab/__init__.py allows: {upward}"


def test_the_grader_index_lists_every_grader_module():
    from peftlab import grader

    listed = set(re.findall(r"^\| `(\w+)` \|", grader.__doc__, re.M))
    modules = {p.stem for p in (PACKAGE / "grader").glob("*.py") if not p.stem.startswith("__")}
    assert listed == modules, f"peftlab/grader/__init__.py's table: missing {modules - listed}, stale {listed - modules}"


def test_the_graph_reader_sees_function_local_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert cycles(graph) == [["a", "b", "c"]]
