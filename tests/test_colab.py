"""Colab and GPUs: the generated setup cell, Colab links, dtype without bf16, T4 fit, NaN stop, installs."""

import importlib.util
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
import torch
from peftlab import colab, models, notebooks, runtime, train
from peftlab.config import RunConfig
from peftlab.memory import GiB

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(
    p.relative_to(ROOT).as_posix()
    for top in ("sessions", "solutions", "exercises")
    for p in (ROOT / top).glob("*/*.ipynb")
)
URL = "https://github.com/example-org/peft-lab"


# ------------------------------------------------------------ dtype and device
@pytest.mark.parametrize(
    "capability, bf16_claimed, expected",
    [
        ((7, 5), True, torch.float32),  # T4: torch counts emulated bf16 as supported; the course must not
        ((7, 0), False, torch.float32),  # V100
        ((8, 0), True, torch.bfloat16),  # A100
        ((9, 0), True, torch.bfloat16),  # H100
    ],
)
def test_auto_dtype_follows_native_bf16(monkeypatch, capability, bf16_claimed, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_claimed)
    assert models.pick_dtype(torch.device("cuda")) == expected
    assert models.pick_dtype(torch.device("cuda"), "float16") == torch.float16  # an explicit choice stands


def test_qlora_compute_dtype_on_a_t4_is_float32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    cfg = RunConfig(method="qlora")
    compute = models.pick_dtype(torch.device("cuda"), cfg.dtype)  # compute_dtype 'auto' follows dtype
    assert models.quantization_config(cfg, compute).bnb_4bit_compute_dtype == torch.float32


# ---------------------------------------------------------------- T4 memory
def test_every_notebook_has_t4_parameters_it_documents():
    documented = {key.split("#")[0] for key in colab.T4_PARAMETERS}
    expected = {nb for nb in NOTEBOOKS if not nb.startswith("exercises/") and nb not in colab.NO_MODEL_NOTEBOOKS}
    assert documented == expected
    for key, params in colab.T4_PARAMETERS.items():
        nb = nbformat.read(ROOT / key.split("#")[0], as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        size = params["model_name"].split("-")[1]  # "Qwen/Qwen2.5-1.5B-Instruct" -> "1.5B"
        assert size in cell.source, f"{key}: its parameters cell does not mention the {size} model"


@pytest.mark.parametrize("key", sorted(colab.T4_PARAMETERS))
def test_t4_parameters_fit_in_14_gib(key):
    est = colab.t4_estimate(colab.T4_PARAMETERS[key])
    assert 0.5 * GiB < est.total < colab.T4_BUDGET_GIB * GiB, f"{key}: predicted {est.total / GiB:.1f} GiB\n{est.table()}"


def test_3b_lora_in_float32_would_not_fit_a_t4():
    # Why the session's T4 row says 1.5B or QLoRA: plain LoRA on 3B in float32 holds 11.5 GiB of weights alone.
    params = dict(colab.T4_PARAMETERS["sessions/02_peft_lora/session02_lora.ipynb"], model_name="Qwen/Qwen2.5-3B-Instruct")
    assert colab.t4_estimate(params).total > colab.T4_BUDGET_GIB * GiB


def test_exercise04_merges_fit_a_t4_one_at_a_time():
    from peftlab.memory import merge_phase_bytes

    key = "solutions/04_qlora_memory/qlora_memory.ipynb"
    name = colab.T4_PARAMETERS[key]["model_name"]
    assert merge_phase_bytes(name, "float32") < colab.T4_BUDGET_GIB * GiB
    # 3B: the 4-bit reference plus one float32 merge take the whole budget in weights alone, nothing left
    # for activations and the CUDA context; hence 1.5B in its parameters.
    assert colab.T4_BUDGET_GIB * GiB - merge_phase_bytes("Qwen/Qwen2.5-3B-Instruct", "float32") < 0.1 * GiB
    # The arithmetic: 4-bit linears + other weights in float32, plus every weight in float32 once more.
    small = merge_phase_bytes("Qwen/Qwen2.5-0.5B-Instruct", "float32")
    assert merge_phase_bytes("Qwen/Qwen2.5-0.5B-Instruct", "bfloat16") < small < 2 * 4 * 494_032_768


def test_gpu_notebook_parameters_match_the_t4_table_and_the_cells():
    assert {k.split("#")[0] for k in colab.T4_PARAMETERS} == set(colab.GPU_NOTEBOOK_PARAMETERS)
    for key, params in colab.GPU_NOTEBOOK_PARAMETERS.items():
        nb = nbformat.read(ROOT / key, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        names = set(params) - {"overrides"}
        assert names <= set(_assigned(cell.source)), f"{key}: {names - set(_assigned(cell.source))} not parameters"
        model = params.get("model_name") or params["overrides"]["model_name"]
        assert model.split("-")[1] in cell.source, f"{key}: its parameters cell does not mention {model}"
        assert "float16 on a T4" not in cell.source, f"{key}: a T4 has no bfloat16 and Qwen2.5 overflows float16"
        if key in colab.T4_PARAMETERS:
            assert colab.T4_PARAMETERS[key]["model_name"] == model


def _assigned(source: str) -> list[str]:
    import ast

    return [t.id for node in ast.parse(source).body if isinstance(node, ast.Assign) for t in node.targets
            if isinstance(t, ast.Name)]


# ------------------------------------------------------------ NaN / inf stop
def test_training_stops_at_the_first_nan_loss(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = RunConfig(model_name="tiny-qwen2", max_steps=8, logging_steps=1, eval_each_epoch=False,
                    per_device_train_batch_size=2, gradient_accumulation_steps=1, output_dir=str(tmp_path / "nan"))
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    calls = {"n": 0}

    def poison(module, args, output):  # forward passes 1-2 are fine, the third one overflows
        calls["n"] += 1
        return output * float("nan") if calls["n"] >= 3 else output

    model.lm_head.register_forward_hook(poison)
    with pytest.raises(train.NonFiniteLossError, match=r"step 3: the loss is nan") as err:
        train.train(cfg, progress=False, model=model)
    assert "learning_rate" in str(err.value)
    assert calls["n"] == 3, "training went on after the NaN"


def test_nan_message_names_float16_overflow():
    guard = train.StopOnNonFiniteLoss()
    guard.bad = (5, float("inf"))
    msg = guard.message(RunConfig(method="qlora", compute_dtype="float16"), "float32")
    assert "step 5" in msg and "float16 overflows" in msg and "compute_dtype='float32'" in msg


# ------------------------------------------------ transformers compatibility
@pytest.mark.parametrize(
    "accepted, name",
    [({"gradient_checkpointing", "gradient_checkpointing_kwargs"}, "gradient_checkpointing"),  # <= 5.22
     ({"activation_checkpointing", "activation_checkpointing_kwargs", "gradient_checkpointing"},
      "activation_checkpointing")],  # 5.23+
)
def test_checkpointing_flag_matches_transformers(accepted, name):
    assert train.checkpointing_arguments(True, accepted) == {name: True, f"{name}_kwargs": {"use_reentrant": False}}


def test_installed_transformers_takes_the_checkpointing_flag(tmp_path):
    cfg = RunConfig(gradient_checkpointing=True, output_dir=str(tmp_path))
    args = train.training_arguments(cfg, torch.device("cpu"), progress=False)
    assert getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing
    assert args.logging_nan_inf_filter is False


# ------------------------------------------------------------ the setup cell
def test_setup_cell_is_generated_and_identical_everywhere():
    sources = set()
    for rel in NOTEBOOKS:
        nb = nbformat.read(ROOT / rel, as_version=4)
        cells = [c for c in nb.cells if colab.SETUP_TAG in c.metadata.get("tags", [])]
        assert len(cells) == 1, f"{rel}: needs one cell tagged {colab.SETUP_TAG}"
        sources.add(cells[0].source)
    url = colab.repository_url(ROOT / "pyproject.toml")
    assert sources == {colab.setup_cell_source(url)}


def _run_cell(source, monkeypatch, on_colab):
    if on_colab:
        google = types.ModuleType("google")
        google.colab = types.ModuleType("google.colab")
        monkeypatch.setitem(sys.modules, "google", google)
        monkeypatch.setitem(sys.modules, "google.colab", google.colab)
    else:
        monkeypatch.setitem(sys.modules, "google.colab", None)  # import fails, as off Colab
    exec(compile(source, "<setup cell>", "exec"), {})


def test_setup_cell_does_nothing_off_colab(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(colab, "setup", lambda **kw: calls.append(kw))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    _run_cell(colab.setup_cell_source(URL), monkeypatch, on_colab=False)
    assert calls == [] and capsys.readouterr().out == ""


def test_setup_cell_on_colab_without_url_says_one_sentence(monkeypatch):
    with pytest.raises(SystemExit) as exc:
        _run_cell(colab.setup_cell_source(None), monkeypatch, on_colab=True)
    message = str(exc.value)
    assert message == colab.URL_UNSET and message.count(". ") == 0 and "pyproject.toml" in message


def test_setup_cell_on_colab_installs_nothing_when_present_and_runs_setup(monkeypatch):
    calls = []
    monkeypatch.setattr(colab, "setup", lambda **kw: calls.append(sorted(kw)))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip ran although peftlab is installed"))
    _run_cell(colab.setup_cell_source(URL), monkeypatch, on_colab=True)
    assert calls == [["before"]]


def test_setup_cell_installs_without_extras():
    src = colab.setup_cell_source(URL)
    assert 'f"peftlab @ git+{_url}"' in src and "[course]" not in src
    assert json.dumps(URL) in src


def test_setup_reports_gpu_licence_and_copies_data(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(colab, "_pip", lambda args: pytest.fail(f"pip ran: {args}"))
    monkeypatch.setattr(colab, "detect", lambda: runtime.Runtime("cpu", 8 * GiB, network=True))
    colab.setup(before=colab.installed_versions(), dest=tmp_path)
    out = capsys.readouterr().out
    assert "Qwen Research License" in out and "Apache-2.0" in out
    assert ("No GPU" in out) != torch.cuda.is_available()
    copied = tmp_path / "formal_emails.csv"
    assert copied.read_bytes() == (ROOT / "solutions" / "05_custom_dataset" / "formal_emails.csv").read_bytes()
    copied.write_text("mine")
    colab.setup(dest=tmp_path)
    assert copied.read_text() == "mine", "setup overwrote a student's file"


def test_t4_report_explains_float32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    props = types.SimpleNamespace(name="Tesla T4", total_memory=15 * 10**9, major=7, minor=5)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    line = colab.gpu_report()
    assert "Tesla T4, 14.0 GiB" in line and "float32" in line and "NaN in float16" in line


def test_restart_needed_only_for_imported_upgrades():
    before = {"transformers": "5.15.0", "peft": "0.20.0", "sacrebleu": "2.4.0"}
    after = {"transformers": "5.15.0", "peft": "0.21.2", "sacrebleu": "2.5.0"}
    assert colab.needs_restart(before, after, loaded={"peft.tuners", "torch"}) == ["peft"]
    assert colab.needs_restart(before, after, loaded={"torch"}) == []


def test_setup_stops_and_says_restart(monkeypatch):
    monkeypatch.setattr(colab, "installed_versions", lambda: {"peft": "0.21.2"})
    with pytest.raises(SystemExit, match=r"upgraded peft.*Restart session"):
        colab.setup(before={"peft": "0.20.0"})


# ------------------------------------------------ URL, links, write and check
def _course_copy(tmp_path, url_line=None):
    for top in ("sessions", "solutions"):
        shutil.copytree(ROOT / top, tmp_path / top)
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    text = (ROOT / "pyproject.toml").read_text()
    if url_line:
        text = text.replace("[project.urls]\n", f"[project.urls]\n{url_line}\n")
    (tmp_path / "pyproject.toml").write_text(text)
    return tmp_path


def test_repository_url_unset_valid_and_malformed(tmp_path):
    assert colab.repository_url(ROOT / "pyproject.toml") is None  # until the course is published
    good = _course_copy(tmp_path / "a", f'Repository = "{URL}.git"')
    assert colab.repository_url(good / "pyproject.toml") == URL
    bad = _course_copy(tmp_path / "b", 'Repository = "gitlab.com/x/y"')
    with pytest.raises(colab.ColabConfigError, match=r"pyproject.toml: \[project.urls\] Repository = 'gitlab.com/x/y'"):
        colab.repository_url(bad / "pyproject.toml")


def test_write_then_check_with_a_url(tmp_path):
    from peftlab.notebooks import main

    course = _course_copy(tmp_path, f'Repository = "{URL}"')
    assert main(["setup-cells", "--check", str(course)]) == 1  # the committed cells hold no URL
    assert main(["setup-cells", "--write", str(course)]) == 0
    assert main(["setup-cells", "--check", str(course)]) == 0
    assert notebooks.sync(course, write=True) == [], "a second write changed something"
    nb = nbformat.read(course / "solutions/04_qlora_memory/qlora_memory.ipynb", as_version=4)
    i = next(i for i, c in enumerate(nb.cells) if colab.SETUP_TAG in c.metadata.get("tags", []))
    link = "https://colab.research.google.com/github/example-org/peft-lab/blob/main/exercises/04_qlora_memory/qlora_memory.ipynb"
    assert colab.BADGE_TAG in nb.cells[i - 1].metadata["tags"] and link in nb.cells[i - 1].source
    assert f'COURSE_URL = "{URL}"' in nb.cells[i].source
    readme = (course / "README.md").read_text()
    assert link in readme and "sessions/02_peft_lora/session02_lora.ipynb" in readme
    assert "solutions/" not in readme.split(notebooks.MARKERS[0])[1].split(notebooks.MARKERS[1])[0]
    # Unset again: badges go, the one-sentence note comes back.
    (course / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    assert main(["setup-cells", "--write", str(course)]) == 0
    assert not (course / "README.md").read_text().count("colab.research.google.com/github")
    assert main(["setup-cells", "--check", str(course)]) == 0


def test_malformed_url_fails_the_check_with_one_line(tmp_path, capsys):
    from peftlab.notebooks import main

    course = _course_copy(tmp_path, 'Repository = "not a url"')
    assert main(["setup-cells", "--check", str(course)]) == 1
    assert "write it as" in capsys.readouterr().out


# ------------------------------------------------------------- package data
def test_chat_template_is_trls_copy():
    trl = pytest.importorskip("trl")
    from importlib import resources

    ours = (resources.files("peftlab") / "data" / "qwen2_5_chat_template.jinja").read_text()
    assert ours == (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()


@pytest.mark.colab_env
@pytest.mark.parametrize("rel", [nb for nb in NOTEBOOKS if not nb.startswith("exercises/")])
def test_notebook_runs_alone_in_an_empty_folder(tiny_dir, tmp_path, rel):
    """What Colab sees: the notebook without its folder; data comes from package data (the setup cell copies it)."""
    papermill = pytest.importorskip("papermill")
    colab.copy_example_data(tmp_path)
    params = dict(output_dir=str(tmp_path / "run"))
    if rel.startswith("sessions/"):
        params.update(preset="shakespeare-tiny", overrides={"num_train_epochs": 2}, n_samples=2)
    papermill.execute_notebook(
        str(ROOT / rel), str(tmp_path / "out.ipynb"), parameters=params, kernel_name="python3",
        cwd=str(tmp_path), progress_bar=False, execution_timeout=600,
    )


# ------------------------------------------------ a Colab-like install with pip
def _resolve(tmp_path, target: str) -> subprocess.CompletedProcess:
    """pip's resolver on the course plus Colab's packages, constrained to Colab's versions; nothing installed."""
    # Colab's pins but torch: this CI's torch is the 2.13.0 CPU build (.ci/colab installs Colab's 2.11.0).
    pins = [line for line in (ROOT / ".ci" / "colab-constraints.txt").read_text().splitlines()
            if "==" in line and not line.startswith("torch==")]
    colab_pins = tmp_path / "colab-pins.txt"
    colab_pins.write_text("\n".join(pins) + "\n")
    wanted = [line.split("==")[0] for line in pins]
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(tmp_path / "report.json"), "-c", str(colab_pins), target, *wanted],
        capture_output=True, text=True, timeout=900,
    )


@pytest.mark.colab_env
def test_course_resolves_on_colab_versions_and_the_instructor_extra_does_not(tmp_path):
    ok = _resolve(tmp_path, str(ROOT))
    assert ok.returncode == 0, ok.stderr[-3000:]
    names = {i["metadata"]["name"].lower() for i in json.loads((tmp_path / "report.json").read_text())["install"]}
    assert not names & {"nbgrader", "jupyterlab", "papermill", "trl"}
    broken = _resolve(tmp_path, f"{ROOT}[course]")
    assert broken.returncode != 0 and "ResolutionImpossible" in broken.stderr


def test_min_constraints_are_pyprojects_lower_bounds():
    import tomllib
    from packaging.requirements import Requirement
    from packaging.version import Version

    floors = {}
    for raw in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(raw)
        lower = [s.version for s in req.specifier if s.operator == ">="]
        floors[req.name.lower().replace("_", "-")] = lower[0] if lower else None
    pins = {}
    for line in (ROOT / "constraints-min.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    assert {"transformers", "peft", "accelerate", "datasets", "bitsandbytes", "huggingface-hub"} <= set(pins)
    for name, version in pins.items():
        if name == "torch":
            continue  # CPU CI has torch 2.13.0 only; the floor is Colab's 2.11
        assert Version(version) == Version(floors[name]), f"{name}: min {version}, pyproject >={floors[name]}"


# ------------------------------------- the URL on Colab: the variable, the env var, file://
def _install_run(monkeypatch, returncode=0):
    """On Colab without peftlab installed: record pip's command, succeed or fail; setup() is recorded too."""
    calls = []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "peftlab" else real(name, *a, **k))
    monkeypatch.setattr(subprocess, "run", lambda cmd, *a, **k: calls.append(cmd) or subprocess.CompletedProcess(cmd, returncode))
    monkeypatch.setattr(colab, "setup", lambda **kw: calls.append("setup"))
    return calls


@pytest.mark.parametrize("cell_url, env_url, installed_from", [
    (None, "file:///srv/peft-lab", "git+file:///srv/peft-lab"),  # CI's fresh clone, as the simulation did
    (None, "git+file:///srv/peft-lab", "git+file:///srv/peft-lab"),
    (URL, None, f"git+{URL}"),
    (URL, "file:///srv/other", "git+file:///srv/other"),  # the environment variable wins
])
def test_setup_cell_installs_from_the_variable_or_the_environment(monkeypatch, cell_url, env_url, installed_from):
    if env_url:
        monkeypatch.setenv(colab.URL_ENV, env_url)
    else:
        monkeypatch.delenv(colab.URL_ENV, raising=False)
    calls = _install_run(monkeypatch)
    _run_cell(colab.setup_cell_source(cell_url), monkeypatch, on_colab=True)
    assert calls[0][-1] == f"peftlab @ {installed_from}" and calls[1] == "setup"


def test_the_url_variable_is_the_first_line_a_student_sees():
    lines = colab.setup_cell_source(None).splitlines()
    assert "repository URL" in lines[0] and colab.URL_ENV in lines[1] and lines[2] == 'COURSE_URL = ""'


def test_a_student_pasting_the_url_needs_nothing_else(monkeypatch):
    monkeypatch.delenv(colab.URL_ENV, raising=False)
    calls = _install_run(monkeypatch)
    source = colab.setup_cell_source(None).replace('COURSE_URL = ""', f'COURSE_URL = "{URL}"', 1)
    _run_cell(source, monkeypatch, on_colab=True)
    assert calls[0][-1] == f"peftlab @ git+{URL}"


@pytest.mark.parametrize("bad", ["github.com/example-org/peft-lab", "peft-lab", "ftp://x/y"])
def test_setup_cell_rejects_a_url_pip_cannot_use_in_one_line(monkeypatch, bad):
    monkeypatch.setenv(colab.URL_ENV, bad)
    calls = _install_run(monkeypatch)
    with pytest.raises(SystemExit) as exc:
        _run_cell(colab.setup_cell_source(None), monkeypatch, on_colab=True)
    assert str(exc.value) == colab.URL_BAD.format(url=bad) and calls == []


def test_setup_cell_says_what_to_check_when_pip_fails(monkeypatch):
    monkeypatch.setenv(colab.URL_ENV, "file:///nowhere")
    calls = _install_run(monkeypatch, returncode=1)
    with pytest.raises(SystemExit) as exc:
        _run_cell(colab.setup_cell_source(None), monkeypatch, on_colab=True)
    assert str(exc.value) == colab.INSTALL_FAILED.format(url="file:///nowhere") and "setup" not in calls


# ------------------------------------------------------------ publish-check
def test_publish_check_fails_until_the_url_is_set_and_says_what_it_generates(tmp_path, capsys):
    course = _course_copy(tmp_path / "unset")
    assert notebooks.main(["publish-check", str(course)]) == 1
    out = capsys.readouterr().out
    assert "not publishable yet" in out and "[project.urls] Repository" in out
    plan = notebooks.publish_plan(course)
    n_notebooks = sum(1 for top in ("sessions", "solutions") for _ in (course / top).glob("*/*.ipynb"))
    assert len([p for p in plan if ".ipynb:" in p]) == n_notebooks and any(p.startswith("README.md:") for p in plan)
    assert all(line in out for line in plan)
    assert "exercises/04_qlora_memory/qlora_memory.ipynb" in out  # the badge opens the student's copy

    course = _course_copy(tmp_path / "set", f'Repository = "{URL}"')
    assert notebooks.main(["publish-check", str(course)]) == 1  # set, but not written yet
    assert "setup-cells --write" in capsys.readouterr().out
    assert notebooks.main(["setup-cells", "--write", str(course)]) == 0
    capsys.readouterr()
    assert notebooks.main(["publish-check", str(course)]) == 0
    assert f"point at {URL}" in capsys.readouterr().out


def test_publish_check_names_a_malformed_url(tmp_path, capsys):
    course = _course_copy(tmp_path, 'Repository = "gitlab.com/x/y"')
    assert notebooks.main(["publish-check", str(course)]) == 1
    assert "write it as" in capsys.readouterr().out
