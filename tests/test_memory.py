import pytest
from peftlab.config import RunConfig
from peftlab.memory import GiB, estimate, nf4_bytes_per_param, weights_bytes

QWEN3B = "Qwen/Qwen2.5-3B-Instruct"


def test_nf4_bytes_per_param():
    # 4 bits + 8-bit absmax per 64 weights + fp32 per 256 blocks (QLoRA section 3)
    assert nf4_bytes_per_param(True) == pytest.approx(4.127 / 8, abs=1e-3)
    assert nf4_bytes_per_param(False) == pytest.approx(4.5 / 8)


def test_weights_by_format():
    bf16 = weights_bytes(QWEN3B, "bfloat16")
    assert bf16 == 2 * 3_085_938_688
    nf4 = weights_bytes(QWEN3B, "nf4")
    assert 0.25 * bf16 < nf4 < 0.4 * bf16  # embeddings stay 16-bit


def test_breakdown_is_consistent():
    est = estimate(QWEN3B, RunConfig(r=16), seq_len=256, batch_size=4)
    # Gradients and activations are not alive together: the peak holds the larger of the two.
    held = [est.base_weights, est.trainable_weights, est.optimizer, est.runtime]
    assert est.total == pytest.approx(sum(held) + max(est.gradients, est.activations + est.logits))
    assert est.trainable_weights == 4 * 3_686_400 and est.optimizer == 8 * 3_686_400
    assert "total" in est.table()


def test_what_each_switch_saves():
    base = RunConfig(r=16, per_device_train_batch_size=4)
    plain = estimate(QWEN3B, base, seq_len=512)
    ckpt = estimate(QWEN3B, RunConfig(r=16, gradient_checkpointing=True), seq_len=512)
    qlora = estimate(QWEN3B, RunConfig(method="qlora", r=16), seq_len=512)
    small = estimate(QWEN3B, RunConfig(r=16, per_device_train_batch_size=1), seq_len=512)
    full = estimate(QWEN3B, RunConfig(method="full"), seq_len=512)
    assert ckpt.activations < plain.activations / 5
    assert qlora.base_weights < plain.base_weights / 2.5
    assert small.activations == pytest.approx(plain.activations / 4)
    assert full.gradients + full.optimizer > 5 * GiB > plain.gradients + plain.optimizer


def test_activations_follow_what_trains():
    """A frozen linear layer keeps no input for backward; an adapted or trained one does."""
    from peftlab.memory import saved_per_token
    from peftlab.models import model_config

    cfg = model_config(QWEN3B)
    h, i = cfg.hidden_size, cfg.intermediate_size
    frozen = saved_per_token(cfg, RunConfig(method="prompt"))
    assert frozen == 6 * h + 3 * i
    assert saved_per_token(cfg, RunConfig(r=8, target_modules=["q_proj", "v_proj"])) == frozen + h + 2 * 8
    assert saved_per_token(cfg, RunConfig(method="full")) == frozen + 3 * h + i + 2 * h  # + norm outputs
    every = saved_per_token(cfg, RunConfig(r=8, target_modules="all-linear"))
    assert every == frozen + 3 * h + i + 7 * 8
