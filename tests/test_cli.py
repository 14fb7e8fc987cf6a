import json

import pytest
from peftlab.cli import main


def test_params_command(capsys):
    assert main(["params", "--config", "shakespeare-reference", "r=16", "target_modules=[q_proj, v_proj]"]) == 0
    assert "trainable 3,686,400 / total 3,089,625,088 (0.1193%)" in capsys.readouterr().out


def test_estimate_command(capsys):
    assert main(["estimate", "--config", "shakespeare-reference", "method=qlora", "--seq-len", "128"]) == 0
    out = capsys.readouterr().out
    assert "base weights" in out and "total" in out and "qlora" in out


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

