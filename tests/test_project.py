"""The project's own shape: dependency files agree, notebooks are clean."""

from pathlib import Path

import nbformat
import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from peftlab import notebooks

ROOT = Path(__file__).resolve().parents[1]


def _pins():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            pins[req.name.lower().replace("_", "-")] = next(iter(req.specifier)).version
    return pins


def test_constraints_satisfy_pyproject_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    pins = _pins()
    for raw in reqs:
        req = Requirement(raw)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is a dependency but constraints.txt does not pin it"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} outside {req.specifier}"
    assert pins["torch"] == "2.13.0"


def test_environment_yml_builds_the_same_environment():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert Requirement(f"python{project['requires-python']}").specifier.contains(python.split("=")[1] + ".0")
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert "-c constraints.txt" in pip
    extras = set(project["optional-dependencies"])
    editable = next(p for p in pip if p.startswith("-e ."))
    assert set(editable.split("[")[1].rstrip("]").split(",")) == extras


def _nb(tmp_path, rel, cells, kernel="python3"):
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": "Python 3", "language": "python"}
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_hygiene_accepts_a_clean_notebook(tmp_path):
    cell = nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]})
    _nb(tmp_path, "sessions/a.ipynb", [cell])
    assert notebooks.main(["check", str(tmp_path)]) == 0


@pytest.mark.parametrize(
    "kind,needle",
    [("outputs", "has outputs"), ("kernel", "kernelspec"), ("noparams", "tagged 'parameters'"),
     ("nonbgrader", "nbgrader"), ("broken", "not a readable notebook")],
)
def test_hygiene_rejects(tmp_path, kind, needle):
    cell = nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]})
    rel, kernel = "sessions/a.ipynb", "python3"
    if kind == "outputs":
        cell.outputs = [nbformat.v4.new_output("stream", text="1")]
    if kind == "kernel":
        kernel = "ir"
    if kind == "noparams":
        cell.metadata = {}
    if kind == "nonbgrader":
        rel = "solutions/a.ipynb"
    path = _nb(tmp_path, rel, [cell], kernel)
    if kind == "broken":
        path.write_text("{not json")
    found = notebooks.problems(path, tmp_path)
    assert any(needle in msg for msg in found), found


def test_strip_keeps_tags_and_nbgrader(tmp_path):
    meta = {"tags": ["parameters"], "nbgrader": {"grade": True, "grade_id": "t1", "points": 2}}
    cell = nbformat.v4.new_code_cell("x = 1", metadata=meta, execution_count=3)
    cell.outputs = [nbformat.v4.new_output("stream", text="1")]
    path = _nb(tmp_path, "solutions/a.ipynb", [cell])
    notebooks.strip(path)
    back = nbformat.read(path, as_version=4).cells[0]
    assert back.outputs == [] and back.execution_count is None and back.metadata == meta


def test_committed_notebooks_are_clean():
    found = [m for nb in notebooks.find_notebooks(ROOT) for m in notebooks.problems(nb, ROOT)]
    assert not found, "\n".join(found)


def test_the_fast_tier_names_tests_that_exist():
    """`make test-fast` lists files and one node id by name: a renamed test must not silently drop out."""
    import re
    import subprocess
    import sys

    makefile = (ROOT / "Makefile").read_text()
    block = re.search(r"^FAST_TESTS := (.*?)\n(?!\t)", makefile, re.S | re.M).group(1)
    items = [item.strip('"') for item in block.replace("\\\n", " ").split()]
    assert len(items) >= 10 and any("::" in item for item in items)
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *items],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    collected = int(re.search(r"(\d+) tests? collected", proc.stdout).group(1))
    assert collected >= 100
