"""Session 2 runs headlessly with papermill on the tiny model, and produces what it claims."""

import json
import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "sessions" / "02_peft_lora" / "session02_lora.ipynb"


def _run(tmp_path, **params):
    papermill = pytest.importorskip("papermill")
    out_nb = tmp_path / "executed.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(out_nb), parameters=params, kernel_name="python3", cwd=str(tmp_path),
        progress_bar=False, execution_timeout=600,
    )
    return out_nb


def test_session02_headless_on_tiny_model(tiny_dir, tmp_path):
    out = tmp_path / "run"
    _run(tmp_path, preset_name="shakespeare-tiny", num_train_epochs=2, n_samples=2, output_dir=str(out))
    record = json.loads((out / "record.json").read_text())
    losses = [loss for _, loss in record["history"]["train"]]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert record["after"]["perplexity"] < record["before"]["perplexity"]
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert record["merge_max_logit_gap"] < 1e-3
    assert record["peak_memory_bytes"] > 0 and record["estimated_peak_bytes"] > 0


@pytest.mark.gpu
def test_session02_on_gpu_with_real_qwen(tmp_path):
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not os.environ.get("PEFTLAB_QWEN_PATH"):
        pytest.skip("needs network or PEFTLAB_QWEN_PATH pointing at a downloaded Qwen2.5 checkpoint")
    name = os.environ.get("PEFTLAB_QWEN_PATH", "Qwen/Qwen2.5-0.5B-Instruct")
    out = tmp_path / "gpu"
    _run(tmp_path, model_name=name, max_steps=10, n_samples=2, output_dir=str(out))
    record = json.loads((out / "record.json").read_text())
    assert record["hardware"].get("gpu")
