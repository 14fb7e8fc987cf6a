"""Parameter counts of Qwen2.5, from its config on the meta device (no download)."""

import pytest
from peftlab.adapters import lora_counts_on_meta
from peftlab.config import RunConfig
from peftlab.models import meta_model

QWEN3B = "Qwen/Qwen2.5-3B-Instruct"

CASES = [
    # (r, targets, trainable, total with adapters)
    (16, ["q_proj", "v_proj"], 3_686_400, 3_089_625_088),
    (4, ["q_proj", "v_proj"], 921_600, 3_086_860_288),
    (16, "all-linear", 29_933_568, 3_115_872_256),
    (4, ["q_proj", "v_proj", "o_proj"], 1_511_424, 3_087_450_112),
]


def test_qwen25_3b_total():
    assert meta_model(QWEN3B).num_parameters() == 3_085_938_688


@pytest.mark.parametrize("r,targets,trainable,total", CASES)
def test_lora_counts_qwen25_3b(r, targets, trainable, total):
    counts = lora_counts_on_meta(QWEN3B, RunConfig(r=r, target_modules=targets))
    assert (counts.trainable, counts.total) == (trainable, total)


def test_percent_matches_published_figure():
    counts = lora_counts_on_meta(QWEN3B, RunConfig(r=16))
    assert round(counts.percent, 4) == 0.1193


@pytest.mark.parametrize("size,total", [("0.5B", 494_032_768), ("1.5B", 1_543_714_304), ("7B", 7_615_616_512)])
def test_other_qwen25_sizes(size, total):
    assert meta_model(f"Qwen/Qwen2.5-{size}-Instruct").num_parameters() == total


def test_quantization_does_not_change_counts_on_a_really_quantized_model(tiny_dir):
    """bitsandbytes quantizes the tiny model to NF4 on the CPU: the counts must still be right.

    The meta device cannot quantize, so this is the only place a 4-bit count is tested.
    """
    import torch
    from peftlab import adapters, models
    from peftlab.memory import estimate

    qlora, lora = (RunConfig(method=m, r=4, target_modules="all-linear") for m in ("qlora", "lora"))
    quantized = adapters.attach(models.load_model(qlora), qlora)
    plain = adapters.attach(models.load_model(lora), lora)
    linears = [m for m in quantized.modules() if type(m).__module__.startswith("bitsandbytes")]
    assert len(linears) == 7 * models.model_config("tiny-qwen2").num_hidden_layers  # every decoder projection
    counted, expected = adapters.count_parameters(quantized), adapters.count_parameters(plain)
    assert counted == expected  # trainable (LoRA) and total: quantization changes neither
    assert counted.trainable == estimate("tiny-qwen2", qlora, seq_len=8, device="cpu").trainable_params
    # The store really is 4-bit: two weights per stored element, so a naive count halves them.
    frozen_linear = sum(m.weight.numel() for n, m in plain.named_modules()
                        if isinstance(m, torch.nn.Linear) and ".layers." in n and "lora_" not in n)
    assert sum(p.numel() for p in quantized.parameters()) == expected.total - frozen_linear // 2
