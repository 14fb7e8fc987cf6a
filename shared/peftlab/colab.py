"""Colab: one setup cell for every notebook, Colab links, and what the runtime must be told.

The repository URL lives in one place, pyproject.toml:

    [project.urls]
    Repository = "https://github.com/OWNER/REPO"

`python -m peftlab.notebooks setup-cells --write` then writes, from that URL,
the setup cell of every notebook under sessions/ and solutions/ (the cell
tagged `colab-setup`), a Colab badge cell above it, and the Colab links
between the `<!-- colab:start -->` / `<!-- colab:end -->` markers of the
READMEs. `--check` is the CI gate that they are up to date.

The setup cell must run on a fresh Colab runtime where the package is not yet installed, so
it is plain Python (`setup_cell_source`): on Colab it pip-installs the
package from the URL, without extras, so nothing of Colab's own Jupyter
stack (ipython, notebook, ipykernel, traitlets) is upgraded, then calls
`setup()`. Anywhere else it does nothing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import re
import shutil
import sys
from importlib import resources
from pathlib import Path

SETUP_TAG = "colab-setup"
BADGE_TAG = "colab-badge"
BRANCH = "main"  # Colab links open this branch
BADGE_IMG = "https://colab.research.google.com/assets/colab-badge.svg"
GITHUB_URL = re.compile(r"^https://github\.com/(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+?)(?:\.git)?/?$")
# Data files a notebook reads from its working directory; on Colab they come from package data.
EXAMPLE_DATA = ("formal_emails.csv",)
T4_BUDGET_GIB = 14.0  # a T4 has 15 GB (about 14.6 GiB usable); leave room for the CUDA context

LICENCE_NOTE = (
    "Licences: Qwen2.5-3B-Instruct (the case study's model) is under the Qwen Research License, "
    "non-commercial use only; Qwen2.5-0.5B, 1.5B and 7B are Apache-2.0. For commercial work use 1.5B or 7B."
)
URL_UNSET = (
    "This course's repository URL is not set yet: whoever publishes the course sets "
    "[project.urls] Repository in pyproject.toml and runs `python -m peftlab.notebooks setup-cells --write`."
)
NOT_INSTALLED = (
    "peftlab is not installed in this kernel: run `pip install -e .` in your clone of the course "
    "(or `make venv`), then restart the kernel."
)


class ColabConfigError(ValueError):
    """pyproject.toml's repository URL is missing a part or malformed; the message says the fix."""


# ------------------------------------------------------------------ the URL
def repository_url(pyproject: str | Path) -> str | None:
    """`[project.urls] Repository` from pyproject.toml, checked; None while it is not set."""
    import tomllib

    path = Path(pyproject)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ColabConfigError(f"{path}: not valid TOML ({exc}).") from None
    url = data.get("project", {}).get("urls", {}).get("Repository")
    if url is None:
        return None
    if not isinstance(url, str) or not GITHUB_URL.match(url):
        raise ColabConfigError(
            f"{path}: [project.urls] Repository = {url!r} is not a GitHub repository URL; "
            "write it as \"https://github.com/OWNER/REPO\" (Colab opens notebooks from GitHub)."
        )
    return url.rstrip("/").removesuffix(".git")


def colab_link(url: str, path: str | Path) -> str:
    """Colab's address for a notebook of the repository at `url`, on BRANCH."""
    m = GITHUB_URL.match(url)
    if m is None:
        raise ColabConfigError(f"{url!r} is not a GitHub repository URL (https://github.com/OWNER/REPO).")
    return f"https://colab.research.google.com/github/{m['owner']}/{m['repo']}/blob/{BRANCH}/{Path(path).as_posix()}"


def badge(url: str, path: str | Path) -> str:
    return f"[![Open In Colab]({BADGE_IMG})]({colab_link(url, path)})"


# ----------------------------------------------------------- the setup cell
def setup_cell_source(url: str | None) -> str:
    """The setup cell, identical in every notebook. Plain Python: peftlab is not installed yet on Colab."""
    q = json.dumps  # double-quoted Python string literals
    return f"""\
# Setup. On Colab: installs the course package and checks the GPU. Elsewhere: nothing.
# Generated from peftlab/colab.py by `python -m peftlab.notebooks setup-cells --write`; edit there.
import importlib, importlib.metadata, importlib.util, subprocess, sys
COURSE_URL = {q(url or "")}  # pyproject.toml [project.urls] Repository
try:
    import google.colab  # noqa: F401  (exists only on Colab)
    ON_COLAB = True
except ImportError:
    ON_COLAB = False
if ON_COLAB:
    if not COURSE_URL:
        raise SystemExit({q(URL_UNSET)})
    _before = {{d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions()}}
    if importlib.util.find_spec("peftlab") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"peftlab @ git+{{COURSE_URL}}"], check=True)
        importlib.invalidate_caches()
    import peftlab.colab
    peftlab.colab.setup(before=_before)
elif importlib.util.find_spec("peftlab") is None:
    raise SystemExit({q(NOT_INSTALLED)})"""


def on_colab() -> bool:
    try:
        import google.colab  # noqa: F401
    except ImportError:
        return False
    return True


def installed_versions() -> dict[str, str]:
    return {d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions()}


def needs_restart(before: dict[str, str], after: dict[str, str], loaded: set[str] | None = None) -> list[str]:
    """Distributions whose version changed while one of their modules is already imported.

    Python keeps the old code of an imported module: such an upgrade takes
    effect only after a runtime restart. Upgrading what nobody imported yet
    needs none.
    """
    loaded = set(sys.modules) if loaded is None else loaded
    top_level = {m.split(".")[0] for m in loaded}
    owners = importlib.metadata.packages_distributions()  # module -> [distribution names]
    imported = {d.lower() for m in top_level for d in owners.get(m, [])}
    return sorted(name for name, v in before.items() if name in after and after[name] != v and name in imported)


def copy_example_data(dest: str | Path = ".") -> list[Path]:
    """Put the course's example data files (package data) into `dest`, keeping any that exist."""
    written = []
    for name in EXAMPLE_DATA:
        target = Path(dest) / name
        if not target.exists():
            with resources.as_file(resources.files("peftlab") / "data" / name) as src:
                shutil.copyfile(src, target)
            written.append(target)
    return written


def gpu_report() -> str:
    """One line on the GPU: name, memory, and the dtype the course picks on it (see models.pick_dtype)."""
    import torch

    from .models import pick_dtype

    if not torch.cuda.is_available():
        return ("No GPU: the notebooks run on the CPU with model_name='tiny-qwen2'. "
                "For a GPU: Runtime > Change runtime type > T4 GPU.")
    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(device)
    dtype = str(pick_dtype(device)).removeprefix("torch.")
    line = f"GPU: {props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability {props.major}.{props.minor}; "
    if dtype == "bfloat16":
        return line + "dtype='auto' trains in bfloat16."
    return line + (
        "no native bfloat16, so dtype='auto' trains in float32: Qwen2.5 overflows to NaN in float16. "
        "To fit a 3B model use method='qlora' (4-bit base, float32 compute)."
    )


def setup(before: dict[str, str] | None = None, dest: str | Path = ".") -> None:
    """What the setup cell does on Colab once peftlab is installed."""
    changed = needs_restart(before or {}, installed_versions())
    if changed:
        raise SystemExit(
            f"Installing the course upgraded {', '.join(changed)}, already imported in this runtime: "
            "Runtime > Restart session, then run the notebook again from the top."
        )
    for path in copy_example_data(dest):
        print(f"copied the course's {path.name} into {Path(dest).resolve()}")
    print(gpu_report())
    print(LICENCE_NOTE)


# ---------------------------------------------------- T4 fit of every notebook
# Each notebook's GPU parameters as its parameters cell documents them, set for a T4
# (no bfloat16, so dtype 'auto' means float32; see models.pick_dtype). The test
# `tests/test_colab.py` predicts each one's peak with peftlab.memory and requires < T4_BUDGET_GIB.
T4_PARAMETERS: dict[str, dict] = {
    "sessions/02_peft_lora/session02_lora.ipynb": dict(
        model_name="Qwen/Qwen2.5-1.5B-Instruct", method="lora", r=4, lora_alpha=16,
        target_modules=["q_proj", "v_proj", "o_proj"], per_device_train_batch_size=4, seq_len=256),
    "sessions/02_peft_lora/session02_lora.ipynb#qlora": dict(
        model_name="Qwen/Qwen2.5-3B-Instruct", method="qlora", r=4, lora_alpha=16,
        target_modules=["q_proj", "v_proj", "o_proj"], per_device_train_batch_size=4, seq_len=256),
    # Session 3 trains three adapters one after the other, each on a fresh base: one at a time in memory.
    "sessions/03_multi_adapter/session03_multi_adapter.ipynb": dict(
        model_name="Qwen/Qwen2.5-1.5B-Instruct", method="lora", r=4, lora_alpha=16,
        target_modules=["q_proj", "v_proj", "o_proj"], per_device_train_batch_size=4, seq_len=256),
    # Session 4 trains nine methods one after the other; full fine-tuning is the largest (16 bytes per weight).
    "sessions/04_methods/session04_methods.ipynb": dict(
        model_name="Qwen/Qwen2.5-0.5B-Instruct", method="full", per_device_train_batch_size=4, seq_len=256),
    # Session 5 trains nothing: its adapters' recipe stands here. It holds at most two copies of the model at
    # once (served + merged, then served + a float32 copy: 2 x 2 GB for 0.5B in float32), and the memory
    # section loads one more in a separate process.
    "sessions/05_inference/session05_inference.ipynb": dict(
        model_name="Qwen/Qwen2.5-0.5B-Instruct", method="lora", r=4, lora_alpha=16,
        target_modules=["q_proj", "v_proj", "o_proj"], per_device_train_batch_size=4, seq_len=256),
    "solutions/01_lora_from_scratch/lora_from_scratch.ipynb": dict(
        model_name="Qwen/Qwen2.5-0.5B-Instruct", method="lora", r=8, target_modules=["q_proj", "v_proj"],
        per_device_train_batch_size=4, seq_len=256),
    "solutions/02_rank_alpha_sweep/rank_alpha_sweep.ipynb": dict(
        model_name="Qwen/Qwen2.5-0.5B-Instruct", method="lora", r=32, target_modules=["q_proj", "v_proj"],
        per_device_train_batch_size=4, seq_len=256),
    "solutions/03_target_modules/target_modules.ipynb": dict(
        model_name="Qwen/Qwen2.5-0.5B-Instruct", method="lora", r=16, target_modules="all-linear",
        per_device_train_batch_size=4, seq_len=256),
    # 1.5B, not 3B: the merge section holds the 4-bit model and one float32 merge (memory.merge_phase_bytes).
    "solutions/04_qlora_memory/qlora_memory.ipynb": dict(
        model_name="Qwen/Qwen2.5-1.5B-Instruct", method="qlora", r=8, target_modules="all-linear",
        per_device_train_batch_size=4, seq_len=256, compute_dtype="float32"),
    "solutions/05_custom_dataset/custom_dataset.ipynb": dict(
        model_name="Qwen/Qwen2.5-0.5B-Instruct", method="lora", r=8, target_modules=["q_proj", "v_proj"],
        per_device_train_batch_size=4, seq_len=128),
    # Exercise 06 trains nothing: two adapters and their combination on one base, forward passes only.
    "solutions/06_adapters/adapters.ipynb": dict(
        model_name="Qwen/Qwen2.5-0.5B-Instruct", method="lora", r=8, target_modules=["q_proj", "v_proj"],
        per_device_train_batch_size=4, seq_len=128),
    # Exercise 07 counts Qwen2.5-3B on the meta device (no memory) and trains two methods one after the other.
    "solutions/07_methods/methods.ipynb": dict(
        model_name="Qwen/Qwen2.5-0.5B-Instruct", method="lora", r=8, target_modules=["q_proj", "v_proj"],
        per_device_train_batch_size=4, seq_len=256),
}
# Notebooks that load no model at all (exercise 08 scores given texts): nothing to fit on a T4.
NO_MODEL_NOTEBOOKS = ("solutions/08_custom_metric/custom_metric.ipynb",)


def t4_estimate(params: dict):
    """peftlab.memory's predicted training peak for `params` on a T4 (float32 where 'auto')."""
    from .config import RunConfig
    from .memory import estimate

    params = dict(params)
    seq_len = params.pop("seq_len")
    config = RunConfig(**({"dtype": "auto", "compute_dtype": "auto"} | params))
    return estimate(config.model_name, config, seq_len=seq_len, device="cuda", bf16=False)


# The same runs as notebook parameters (what a student types into the parameters cell on a T4,
# and what tests/test_gpu.py injects, with Qwen2.5-0.5B-Instruct for speed).
GPU_NOTEBOOK_PARAMETERS: dict[str, dict] = {
    "sessions/02_peft_lora/session02_lora.ipynb": {"overrides": {"model_name": "Qwen/Qwen2.5-1.5B-Instruct"}},
    "sessions/03_multi_adapter/session03_multi_adapter.ipynb": {
        "overrides": {"model_name": "Qwen/Qwen2.5-1.5B-Instruct"}},
    "sessions/04_methods/session04_methods.ipynb": {"overrides": {"model_name": "Qwen/Qwen2.5-0.5B-Instruct"}},
    "sessions/05_inference/session05_inference.ipynb": {"overrides": {"model_name": "Qwen/Qwen2.5-0.5B-Instruct"}},
    "solutions/01_lora_from_scratch/lora_from_scratch.ipynb": {
        "model_name": "Qwen/Qwen2.5-0.5B-Instruct", "device": "auto", "dtype": "float32"},
    "solutions/02_rank_alpha_sweep/rank_alpha_sweep.ipynb": {
        "model_name": "Qwen/Qwen2.5-0.5B-Instruct", "device": "auto", "dtype": "float32",
        "ranks": [4, 8, 16, 32], "max_steps": 100, "max_train_samples": None},
    "solutions/03_target_modules/target_modules.ipynb": {
        "model_name": "Qwen/Qwen2.5-0.5B-Instruct", "device": "auto", "dtype": "float32",
        "budget": 2_000_000, "max_steps": 100, "max_train_samples": None},
    "solutions/04_qlora_memory/qlora_memory.ipynb": {
        "model_name": "Qwen/Qwen2.5-1.5B-Instruct", "device": "auto", "compute_dtype": "float32",
        "max_steps": 60, "max_train_samples": None},
    "solutions/05_custom_dataset/custom_dataset.ipynb": {
        "model_name": "Qwen/Qwen2.5-0.5B-Instruct", "device": "auto", "dtype": "float32", "max_steps": 60},
    "solutions/06_adapters/adapters.ipynb": {"model_name": "Qwen/Qwen2.5-0.5B-Instruct", "device": "auto"},
    "solutions/07_methods/methods.ipynb": {
        "model_name": "Qwen/Qwen2.5-0.5B-Instruct", "device": "auto", "dtype": "float32", "max_steps": 60,
        "max_train_samples": None},
}


# ------------------------------------------------------ writing and checking
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


def sync(root: str | Path = ".", write: bool = False) -> list[str]:
    """Files whose generated Colab parts are out of date (rewritten when `write`)."""
    import nbformat

    from .notebooks import find_notebooks

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
    for path in sorted(root.glob("**/README.md")):
        if {".venv", ".venv-min", ".git", "runs"} & set(path.relative_to(root).parts):
            continue
        text = path.read_text()
        if MARKERS[0] not in text:
            continue
        new = render_readme(text, block)
        if new != text:
            stale.append(_repo_path(root, path))
            if write:
                path.write_text(new)
    return stale
