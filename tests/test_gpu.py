"""Runs only where CUDA is available (skipped on CPU machines and in CI)."""

import json

import pytest
import torch
from peftlab import colab

pytestmark = pytest.mark.gpu


def test_auto_dtype_on_gpu():
    from peftlab.devices import pick_device, pick_dtype

    device = pick_device("auto")
    assert device.type == "cuda"
    assert pick_dtype(device) in (torch.bfloat16, torch.float32)  # never float16: see devices.gpu_dtype


def test_qlora_on_gpu_measures_cuda_peak(tiny_dir, tmp_path):
    from peftlab import train
    from peftlab.config import RunConfig

    cfg = RunConfig(model_name="tiny-qwen2", method="qlora", max_steps=3, eval_each_epoch=False,
                    output_dir=str(tmp_path / "gpu"))
    res = train.train(cfg, progress=False)
    assert res.peak.source == "cuda max_memory_allocated" and res.peak.bytes > 0


def _qwen_05b() -> str | None:
    """Qwen2.5-0.5B-Instruct where it is present: $PEFTLAB_QWEN_PATH, or the Hugging Face cache."""
    import os

    if os.environ.get("PEFTLAB_QWEN_PATH"):
        return os.environ["PEFTLAB_QWEN_PATH"]
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache("Qwen/Qwen2.5-0.5B-Instruct", "config.json")
    return "Qwen/Qwen2.5-0.5B-Instruct" if isinstance(found, str) else None


@pytest.mark.parametrize("key", sorted(colab.GPU_NOTEBOOK_PARAMETERS))
def test_notebook_runs_with_its_gpu_parameters(key, tmp_path):
    """Each notebook with the parameters its cell documents for a T4, on Qwen2.5-0.5B-Instruct."""
    from pathlib import Path

    papermill = pytest.importorskip("papermill")
    model = _qwen_05b()
    if model is None:
        pytest.skip("Qwen2.5-0.5B-Instruct is not downloaded (set PEFTLAB_QWEN_PATH or fill the HF cache)")
    params = json.loads(json.dumps(colab.GPU_NOTEBOOK_PARAMETERS[key]))
    if "overrides" in params:
        params["overrides"].update(model_name=model, max_steps=10)
    else:
        params["model_name"] = model
        params["max_steps"] = min(params.get("max_steps", 10), 10)
    params["output_dir"] = str(tmp_path / "run")
    notebook = Path(__file__).resolve().parents[1] / key
    # Far above the work it bounds (minutes for the slowest notebook on one GPU).
    papermill.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), parameters=params, cwd=str(tmp_path),
                               kernel_name="python3", progress_bar=False, execution_timeout=3600)
