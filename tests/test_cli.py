import json

import pytest
from peftlab import devices
from peftlab.cli import main


def test_params_command(capsys):
    assert main(["params", "--config", "shakespeare-reference", "r=16", "target_modules=[q_proj, v_proj]"]) == 0
    assert "trainable 3,686,400 / total 3,089,625,088 (0.1193%)" in capsys.readouterr().out


def test_estimate_command(capsys):
    assert main(["estimate", "--config", "shakespeare-reference", "method=qlora", "--seq-len", "128"]) == 0
    out = capsys.readouterr().out
    assert "base weights" in out and "total" in out and "qlora" in out


def _base_gib(out: str) -> float:
    return float(next(line for line in out.splitlines() if line.startswith("base weights")).split()[2])


def test_estimate_defaults_to_this_machine(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["estimate", "--config", "shakespeare-reference", "--seq-len", "64"]
    assert main(argv) == 0
    here = capsys.readouterr().out
    assert "on this CPU process" in here
    assert main([*argv, "--device", "cuda"]) == 0
    bf16 = capsys.readouterr().out
    assert main([*argv, "--device", "cuda-no-bf16"]) == 0
    t4 = capsys.readouterr().out
    assert "with bfloat16" in bf16 and "without bfloat16" in t4
    # float32 on a T4, bf16 on an Ampere GPU: twice the bytes per weight. The CPU gets what it computes
    # natively (devices.resolve_dtype): bf16 with AVX512-BF16/AMX, float32 elsewhere.
    assert _base_gib(t4) == pytest.approx(2 * _base_gib(bf16))
    assert _base_gib(here) == (_base_gib(bf16) if devices.cpu_bf16_native() else _base_gib(t4))


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train", "r=0"], "RunConfig.r=0"),
        (["train", "model_name=Qwen/Qwen2.5-3B-Instruct"], "cannot load 'Qwen/Qwen2.5-3B-Instruct'"),
        (["train", "--config", "nope.yaml"], "no such config file"),
        (["train", "train_file=/no/such.jsonl"], "/no/such.jsonl: no such file"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, capsys, tiny_dir, tmp_path):
    assert main([*argv, f"output_dir={tmp_path}"] if "--config" not in argv else argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_train_and_generate_end_to_end(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", "shakespeare-tiny", "--no-progress", "max_steps=3", f"output_dir={out}"]) == 0
    assert "=== Summary ===" in capsys.readouterr().out
    assert main(["generate", "--config", "shakespeare-tiny", "--adapter", str(out / "adapter"), "Good morning."]) == 0
    assert "Good morning.\n  -> " in capsys.readouterr().out
    assert main(["eval", "--config", "shakespeare-tiny", "--adapter", str(out / "adapter")]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["perplexity"] > 1 and 0 <= scores["chrf"] <= 100



# One value per annotated type that no reading can turn into that type.
BAD_BY_TYPE = {"int": "abc", "float": "two", "bool": "maybe", "str": "[a, b]", "dict": "abc",
               "Any": "{a: 1}", "str | None": "[a, b]", "int | None": "2.5"}


def _fields():
    import dataclasses

    from peftlab.config import RunConfig

    return [(f.name, str(f.type)) for f in dataclasses.fields(RunConfig)]


@pytest.mark.parametrize("name,type_name", _fields())
def test_every_field_rejects_a_bad_value_without_a_traceback(name, type_name, capsys):
    value = BAD_BY_TYPE[type_name]  # a new field type needs a bad value here
    assert main(["params", "--config", "shakespeare-reference", f"{name}={value}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"peftlab params: error: override {name}={value}: RunConfig.{name}="), err
    assert "Traceback" not in err and err.count("\n") == 1


def test_yaml_values_are_coerced_and_bad_ones_name_the_line(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("model_name: Qwen/Qwen2.5-3B-Instruct\nlearning_rate: 1e-4\nr: 16\nuse_rslora: yes\n")
    from peftlab.config import RunConfig

    config = RunConfig.from_yaml(good, ["lora_alpha=3.2e1"])
    assert (config.learning_rate, config.r, config.use_rslora, config.lora_alpha) == (1e-4, 16, True, 32.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name: Qwen/Qwen2.5-3B-Instruct\n\nnum_train_epochs: two\n")
    assert main(["params", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}, line 3: RunConfig.num_train_epochs='two': expected a number" in err


def test_issue_examples_through_a_real_process(tmp_path):
    """The exact commands that used to end in a TypeError traceback."""
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "peftlab.cli", "params", "--config", "shakespeare-reference",
                               *args], capture_output=True, text=True, timeout=600)

    ok = run("learning_rate=1e-3")
    assert ok.returncode == 0, ok.stderr
    for arg in ("lora_alpha=abc", "num_train_epochs=two"):
        proc = run(arg)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert f"RunConfig.{arg.split('=')[0]}=" in proc.stderr


def _command_mentions():
    """Every `peftlab <command> [--option ...]` written in the package, READMEs, notebooks and Makefile."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = [*root.glob("shared/peftlab/**/*.py"), *root.glob("*.md"), *root.glob("*/**/README.md"),
             *root.glob("sessions/**/*.ipynb"), *root.glob("solutions/**/*.ipynb"),
             *root.glob("exercises/**/*.ipynb"), root / "Makefile"]
    mention = re.compile(r"(?<![\w./-])peftlab ([a-z][\w-]*)(.*)")
    out = []
    for path in files:
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            for m in mention.finditer(line):
                if m.group(1) in ("import", "is"):  # prose and Python, not commands
                    continue
                rest = re.split(r"[`#\"']|\\n", m.group(2))[0]  # the command ends with its code span or string
                out.append((f"{path.relative_to(root)}:{lineno}", m.group(1), re.findall(r"--[\w-]+", rest)))
    return out


def test_every_command_named_in_messages_and_docs_exists():
    from peftlab.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    mentions = _command_mentions()
    assert {"train", "params", "estimate", "help-config"} <= {cmd for _, cmd, _ in mentions}  # the grep works
    for where, cmd, options in mentions:
        assert cmd in commands, f"{where}: `peftlab {cmd}` is not a command; commands are {sorted(commands)}"
        for option in options:
            assert option in commands[cmd]._option_string_actions, f"{where}: `peftlab {cmd} {option}` does not exist"


def test_help_advertises_only_real_commands():
    import re

    from peftlab.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    advertised = re.search(r"`peftlab ([^`]*)`", parser.description).group(1).split(" | ")
    assert sorted(advertised) == sorted(commands)


def test_misspelt_target_module_is_named_before_any_weights_load(capsys):
    assert main(["params", "--config", "shakespeare-reference", "target_modules=[q_projj, v_proj]"]) == 2
    err = capsys.readouterr().err
    assert "no module of Qwen2ForCausalLM is named 'q_projj'" in err and "q_proj, up_proj, v_proj" in err
