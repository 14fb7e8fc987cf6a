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


def test_quantization_does_not_change_trainable_count():
    plain = lora_counts_on_meta(QWEN3B, RunConfig(method="lora", r=16))
    qlora = lora_counts_on_meta(QWEN3B, RunConfig(method="qlora", r=16))
    assert plain.trainable == qlora.trainable == 3_686_400
