"""The benchmark scripts run at smoke size so they cannot rot (no timing asserted)."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "throughput.py"


def test_throughput_benchmark_smoke(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "t.json"
    assert module.main(["--steps", "2", "--batch-size", "4", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert len(record["results"]) == 2 and record["ratio"] > 0
    assert all(r["tokens"] > 0 for r in record["results"].values())
    assert "speed-up" in capsys.readouterr().out


def test_grading_benchmark_smoke(tiny_dir, tmp_path, monkeypatch, capsys):
    import shutil

    from peftlab.grader import exercises

    course = tmp_path / "course"
    shutil.copytree(Path(__file__).parent / "fixtures" / "course", course)
    exercises.release(course)
    spec = importlib.util.spec_from_file_location("bench_grading", BENCH.parent / "grading.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "g.json"
    code = module.main(["--root", str(course), "--assignment", "90_fixture", "--n", "2", "--workers", "2",
                        "--out", str(out)])
    record = json.loads(out.read_text())
    assert code == 0 and record["identical"], "one worker and two must give the same grades"
    assert record["runs"]["sequential"]["statuses"] == ["graded"] and record["ratio"] > 0
    assert "submissions/min" in capsys.readouterr().out


def _bench_module(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_memory_notebooks_and_report_smoke(tiny_dir, tmp_path, capsys):
    bench = tmp_path / "bench"
    memory = _bench_module("memory")
    assert memory.main(["--size", "smoke", "--steps", "2", "--seq-len", "32", "--batch", "2", "--no-allocator-check",
                        "--configs", "full fine-tuning,LoRA r=8 q+v", "--out", str(bench / "memory")]) == 0
    record = json.loads((bench / "memory" / "records.json").read_text())
    full, lora = record["records"]
    assert full["trainable"] == full["total"] and 0 < lora["trainable"] < lora["total"]
    assert all(r["peak_bytes"] > 0 and r["estimated_bytes"] > 0 and r["tokens_per_s"] > 0 for r in record["records"])
    # AdamW in the weights' dtype (dtype 'auto': bf16 on a CPU that computes it natively, else fp32):
    # weight + gradient + two moments = 4 x the weight's bytes per parameter; a frozen base weight is 1 x.
    wbytes = 2 if record["conditions"]["dtype"].startswith("bfloat16") else 4
    assert abs(full["state_bytes_per_param"] - 4 * wbytes) < 0.1
    assert abs(lora["base_linear_bytes_per_param"] - wbytes) < 1e-9
    assert [p["model"] for p in record["predictions"]][-1] == "Qwen/Qwen2.5-7B-Instruct"
    assert (bench / "memory" / "memory.png").stat().st_size > 1000

    notebooks = _bench_module("notebooks")
    assert notebooks.main(["--root", str(Path(__file__).parent / "fixtures" / "course"),
                           "--out", str(bench / "notebooks.json")]) == 0
    assert json.loads((bench / "notebooks.json").read_text())["notebooks"][0]["seconds"] > 0

    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Performance\n\n<!-- performance:start -->\nold\n<!-- performance:end -->\n")
    assert _bench_module("report").main(["--bench", str(bench), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and "| full fine-tuning |" in text and "fixture.ipynb" in text
    assert "Largest estimator error" in text
    assert "on a GPU" not in text.split("The estimator's training peaks")[0]  # no GPU record, no GPU section

    # A GPU run's record (bench/memory.py --device cuda) adds its own table, and its predictions replace the
    # CPU record's: the estimator's newer code. Same layout, so the CPU record stands in for it here.
    gpu = json.loads(json.dumps(record))
    gpu["hardware"].update(gpu="NVIDIA H200", gpu_memory_gib=139.8)
    gpu["conditions"].update(device="cuda", dtype="bfloat16 on GPU")
    gpu["commit"] = "f" * 40
    gpu["predictions"][-1]["full"] = 123.0 * 2**30
    (bench / "memory-cuda").mkdir()
    (bench / "memory-cuda" / "records.json").write_text(json.dumps(gpu))
    (bench / "memory-cuda" / "table.md").write_text((bench / "memory" / "table.md").read_text())
    assert _bench_module("report").main(["--bench", str(bench), "--readme", str(readme)]) == 0
    text = readme.read_text()
    gpu_part = text.split("### Memory of one training step on a GPU")[1].split("The estimator's training peaks")[0]
    assert "NVIDIA H200" in gpu_part and "bfloat16 on GPU" in gpu_part
    assert "| full fine-tuning |" in gpu_part and "| LoRA r=8 q+v |" in gpu_part
    assert "| Qwen/Qwen2.5-7B-Instruct | 123.0 GiB |" in text and "`ffffffffff`" in text


def test_exercise_cells_benchmark_smoke(tiny_dir, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("exercise_cells", BENCH.parent / "exercise_cells.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "cells.json"
    module.main(["--root", str(Path(__file__).parent / "fixtures" / "course"), "--out", str(out)])
    (nb,) = json.loads(out.read_text())["notebooks"]
    kinds = {c["kind"] for c in nb["cells"]}
    assert {"test", "solution"} <= kinds and all(c["seconds"] >= 0 for c in nb["cells"])
    assert nb["slowest"]["seconds"] == max(c["seconds"] for c in nb["cells"])
    assert "slowest cell" in capsys.readouterr().out


def test_inference_benchmark_and_its_report_section_smoke(tiny_dir, tmp_path, capsys):
    bench = tmp_path / "bench"
    inference = _bench_module("inference")
    assert inference.main(["--size", "smoke", "--out", str(bench / "inference")]) == 0
    record = json.loads((bench / "inference" / "record.json").read_text())
    assert {(r["variant"], r["use_cache"]) for r in record["speed"]} == {
        (v, c) for v in ("unmerged", "merged", "mixed") for c in (True, False)}
    assert all(r["tokens_per_s"]["median"] > 0 for r in record["speed"])
    assert record["merged_agreement"]["token_agreement"] == 1.0 and all(record["mixed_agreement"]["rows_equal"])
    assert {m["format"] for m in record["memory"]} == {"float32", "bfloat16", "nf4"}
    assert (bench / "inference" / "throughput.png").stat().st_size > 1000
    assert "merged / unmerged" in capsys.readouterr().out

    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- performance:start -->\nkept\n<!-- performance:end -->\n\n"
                      "<!-- inference:start -->\nold\n<!-- inference:end -->\n")
    report = _bench_module("report")
    assert report.main(["--bench", str(bench), "--readme", str(readme), "--sections", "inference"]) == 0
    text = readme.read_text()
    assert "kept" in text and "old" not in text  # only the inference section is rewritten
    assert "| merged | on | 4 |" in text and "Predicted, not measured" in text and "tiny-qwen2" in text
    bare = tmp_path / "BARE.md"
    bare.write_text("# x\n\n<!-- performance:start -->\nkept\n<!-- performance:end -->\n")
    assert report.main(["--bench", str(bench), "--readme", str(bare), "--sections", "inference"]) == 1
    assert "inference:start" in capsys.readouterr().err and "kept" in bare.read_text()


def test_case_study_sweep_table_reads_gain_against_its_ci():
    report = _bench_module("report")
    row = {"change": {"num_train_epochs": 3}, "train_s": 300.0, "steps": 66, "chrF": 55.0, "chrF_ci": 4.0,
           "copy_chrF": 47.4, "gain": 7.6, "gain_ci": 3.1, "p_vs_copy": 0.001, "archaic_share": 0.6}
    old = {"change": "preset", "train_s": 160.0, "steps": 64, "chrF": 55.0, "chrF_ci": 8.9, "copy_chrF": 49.0,
           "p_vs_copy": 0.116, "archaic_share": 0.62}  # an older record: no gain CI
    sml = {"cpu_count": 2, "conditions": {"load_average_at_start": [5.0]}, "commit": "abcdef1234567",
           "sweep": [row, old], "sweep_data": {"train": 172, "test": 82}}
    text = "\n".join(report.sweep_section(sml, demo_data=(64, 24)))
    assert "| num_train_epochs=3 | 55.0 +- 4.0 | +7.6 +- 3.1 | 0.001 | 60% | 66 | 300 | 4.55 |" in text
    assert "| preset | 55.0 +- 8.9 | +6.0 |" in text
    assert "172 training and 82 held-out pairs" in text and "not comparable" in text  # demo on other data
    assert "upper bounds" in text  # load 5 on 2 cores
    same = "\n".join(report.sweep_section(sml, demo_data=(172, 82)))
    assert "not comparable" not in same


def test_case_study_report_reads_a_real_record(tiny_dir, tmp_path):
    """The README's case-study section from a real (tiny-model) case-study record: the estimator is
    compared with the measured step, and the targets the run missed are named."""
    from peftlab import casestudy
    from peftlab.config import preset

    record = casestudy.run(preset("shakespeare-tiny", num_train_epochs=1, output_dir=str(tmp_path / "run")),
                           progress=False, log=lambda *a: None)
    sml = {"cpu_count": 2, "commit": "0123456789abcdef-dirty", "demo": {"wall_s": 90.0, "record": record},
           "conditions": {"torch_threads": 2, "load_average_at_start": [0.3], "load_average_at_end": [1.0],
                          "cpu_kind": "AVX2, no native bfloat16", "simulated_avx2": True, "dtype": "float32"}}
    text = "\n".join(_bench_module("report").smollm_section(sml))
    assert "on a CPU of kind AVX2, no native bfloat16 (held to AVX2 by `--simulate-avx2`), float32, 2 CPU cores" in text
    b, seq_len = record["step_batch_shape"]
    assert f"tensor peak of a training step ({b} x {seq_len} tokens), within 15%" in text
    assert "`0123456789` with uncommitted changes" in text and "(otherwise idle)" in text
    assert "Targets not met in this run: chrF gain over copying beyond its CI, archaic share." in text


def test_adapter_outputs_smoke_and_bad_arguments(tiny_dir, tmp_path, capsys):
    """Exercise 8's given outputs come from this script: one output per sentence and system, and where each
    adapter came from; a malformed --adapter stops with a message naming it."""
    import peft
    import pytest
    import torch
    from peftlab import models
    from peftlab.config import preset

    torch.manual_seed(0)
    folder = tmp_path / "run" / "adapter"
    model = peft.get_peft_model(models.load_model(preset("shakespeare-tiny")),
                                peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(folder)
    (tmp_path / "run" / "record.json").write_text(json.dumps({"git_commit": "abc", "kind": "session02",
                                                              "config": {"num_train_epochs": 2.0}}))
    (tmp_path / "run" / "checkpoint-6").mkdir()
    script = _bench_module("adapter_outputs")
    out = tmp_path / "outputs.json"
    assert script.main(["--preset", "shakespeare-tiny", "--adapter", f"mine={folder}", "--max-new-tokens", "3",
                        "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert list(record["outputs"]) == ["base", "mine"]
    assert all(len(texts) == len(script.PROMPTS) for texts in record["outputs"].values())
    assert record["adapters"]["mine"] == {"folder": str(folder), "r": 4, "lora_alpha": 8,
                                          "target_modules": ["q_proj", "v_proj"],
                                          "run_record": str(tmp_path / "run" / "record.json"), "run_commit": "abc",
                                          "run_kind": "session02", "epochs": 2.0, "steps": 6}
    for bad, says in [("mine", "NAME=FOLDER"), (f"base={folder}", "taken"), (f"x={tmp_path}", "adapter_config.json")]:
        with pytest.raises(SystemExit):
            script.main(["--adapter", bad, "--out", str(out)])
        assert says in capsys.readouterr().err
