"""Runs only where CUDA is available (skipped on CPU machines and in CI)."""

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_auto_dtype_on_gpu():
    from peftlab.models import pick_device, pick_dtype

    device = pick_device("auto")
    assert device.type == "cuda"
    assert pick_dtype(device) in (torch.bfloat16, torch.float32)  # never float16: see models.gpu_dtype


def test_qlora_on_gpu_measures_cuda_peak(tiny_dir, tmp_path):
    from peftlab import train
    from peftlab.config import RunConfig

    cfg = RunConfig(model_name="tiny-qwen2", method="qlora", max_steps=3, eval_each_epoch=False,
                    output_dir=str(tmp_path / "gpu"))
    res = train.train(cfg, progress=False)
    assert res.peak.source == "cuda max_memory_allocated" and res.peak.bytes > 0
