"""Session 2 runs headlessly with papermill and produces what it claims.

On SmolLM2-135M (the CPU default) the test asserts that the model learned the
task: chrF rose past the copy-the-input baseline, the archaic share rose, and
the merged model agrees with the unmerged one. A regression that stops the
model learning fails here. No timing is asserted.
"""

import json
import os
from pathlib import Path

import pytest
from conftest import run_session_notebook
from peftlab import devices, smollm

NOTEBOOK = Path(__file__).resolve().parents[1] / "sessions" / "02_peft_lora" / "session02_lora.ipynb"


def _run(tmp_path, **params):
    return run_session_notebook(NOTEBOOK, tmp_path, **params)


def _rows(record):
    return {q["system"]: q for q in record["quality"]}


def test_session02_headless_on_tiny_model(tiny_dir, tmp_path):
    out = tmp_path / "run"
    _run(tmp_path, preset="shakespeare-tiny", overrides={"num_train_epochs": 2}, n_samples=2, output_dir=str(out))
    record = json.loads((out / "record.json").read_text())
    assert record["preset"] == "shakespeare-tiny"
    losses = [loss for _, loss in record["history"]["train"]]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert [e for e, _ in record["epoch_mean_loss"]] == [1, 2]
    assert record["after"]["perplexity"] < record["before"]["perplexity"]
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert record["merge_max_logit_gap"] < 1e-4 and record["merge_agreement"] == 1.0
    assert record["peak_memory_bytes"] > 0 and record["estimated_peak_bytes"] > 0
    assert abs(record["estimated_peak_bytes"] / record["step_peak_bytes"] - 1) <= 0.15  # the measured step
    assert set(_rows(record)) == {"copy the input", "base", "trained", "references"}
    # The adapter's own files only: far smaller than adapter + tokenizer.
    assert record["adapter_bytes"] < sum(f.stat().st_size for f in (out / "adapter").iterdir())


# The whole case study is the longest work in the suite: about 5 minutes where the CPU computes bfloat16
# natively, about 18 where it has AVX2 only (float32; 1073 s for `make demo` on a 2-core EPYC,
# bench/records/smollm_epyc_avx2.json, which reached the same quality: chrF +8.3 +/- 4.7 over copying,
# 62% archaic). CI's machines are of both kinds and its budget is 90 minutes for everything, so on the
# slow kind this test waits for PEFTLAB_FULL_CASE_STUDY=1; there `.ci/colab` still runs Session 2 on
# SmolLM2 for 2 steps, and `bench/smollm.py` measures the quality with the numbers it records.
FULL_CASE_STUDY = devices.cpu_bf16_native() or os.environ.get("PEFTLAB_FULL_CASE_STUDY") == "1"


@pytest.mark.slow
@pytest.mark.skipif(not smollm.is_available(), reason=f"needs {smollm.INSTALL} (make venv installs it)")
@pytest.mark.skipif(not FULL_CASE_STUDY, reason=(
    f"the full case study takes about 18 min on this CPU ({devices.cpu_kind()}): set PEFTLAB_FULL_CASE_STUDY=1 "
    "to run it here, or measure it with bench/smollm.py"))
def test_session02_on_smollm_learns_the_style(tmp_path):
    out = tmp_path / "run"
    _run(tmp_path, preset="shakespeare-cpu", output_dir=str(out))
    record = json.loads((out / "record.json").read_text())
    q = _rows(record)
    copy, base, trained = q["copy the input"], q["base"], q["trained"]
    assert trained["chrF"] - base["chrF"] > base["chrF 95% CI"], "chrF did not rise beyond noise"
    assert trained["archaic share"] > base["archaic share"] and trained["archaic share"] >= 0.4, "no style learned"
    assert copy["archaic share"] == 0 and trained["BLEU"] > base["BLEU"]
    assert record["after"]["perplexity"] < record["before"]["perplexity"]
    assert record["merge_agreement"] == 1.0 and record["merge_max_logit_gap"] < 1e-3
    assert trained["chrF gain"] > 0, "the trained model does not beat copying its input"
    # Beating copy-the-input by more than the gain's CI is a benchmark target (bench/smollm.py,
    # README Performance), reported there rather than asserted on one run.
    assert abs(record["estimated_peak_bytes"] / record["step_peak_bytes"] - 1) <= 0.15
    assert 0 <= record["after"]["knowledge_accuracy"] <= 1  # forgetting is reported, not bounded


@pytest.mark.gpu
def test_session02_on_gpu_with_real_qwen(tmp_path):
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not os.environ.get("PEFTLAB_QWEN_PATH"):
        pytest.skip("needs network or PEFTLAB_QWEN_PATH pointing at a downloaded Qwen2.5 checkpoint")
    name = os.environ.get("PEFTLAB_QWEN_PATH", "Qwen/Qwen2.5-0.5B-Instruct")
    out = tmp_path / "gpu"
    _run(tmp_path, preset="shakespeare-reference", overrides={"model_name": name, "max_steps": 10},
         n_samples=2, output_dir=str(out))
    record = json.loads((out / "record.json").read_text())
    assert record["hardware"].get("gpu")
