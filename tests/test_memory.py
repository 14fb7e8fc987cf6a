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
    # NF4 linears, but prepare_model_for_kbit_training upcasts the 311M-parameter embedding to fp32
    assert plain.base_weights / 2.5 < qlora.base_weights < plain.base_weights / 2
    assert qlora.activations > plain.activations  # fp32 activations, and the math attention kernel
    assert small.activations == pytest.approx(plain.activations / 4)
    assert full.gradients + full.optimizer > 5 * GiB > plain.gradients + plain.optimizer


def test_activations_follow_what_trains():
    """A frozen linear layer keeps no input for backward; an adapted or trained one does, and
    peft's LoRA keeps each adapter's input in fp32 (dropped out, with its noise, when dropout > 0)."""
    from peftlab.memory import saved_bytes_per_token
    from peftlab.models import model_config

    cfg = model_config(QWEN3B)
    h, i = cfg.hidden_size, cfg.intermediate_size
    frozen = saved_bytes_per_token(cfg, RunConfig(method="prompt"), act_bytes=2)
    assert frozen == 2 * h * 4 + 2 * (4 * h + 3 * i)  # the norms keep their input in fp32
    cpu_fp32 = saved_bytes_per_token(cfg, RunConfig(method="prompt"), act_bytes=4, device="cpu")
    assert cpu_fp32 == 4 * (2 * h + 4 * h + 3 * i)
    # CUDA, fp32 with grouped KV heads: the math attention kernel keeps q, k, v and the probabilities.
    heads = cfg.num_attention_heads
    assert heads > cfg.num_key_value_heads
    cuda_fp32 = saved_bytes_per_token(cfg, RunConfig(method="prompt"), act_bytes=4, device="cuda", seq_len=512)
    assert cuda_fp32 == cpu_fp32 - 4 * h + 4 * heads * 512
    qv = dict(r=8, target_modules=["q_proj", "v_proj"])
    # fp32, no dropout: q and v share one input; each adapter keeps its rank-8 intermediate in fp32.
    fp32_frozen = saved_bytes_per_token(cfg, RunConfig(method="prompt"), act_bytes=4)
    assert saved_bytes_per_token(cfg, RunConfig(lora_dropout=0.0, **qv), act_bytes=4) == fp32_frozen + 4 * h + 4 * 2 * 8
    # bf16: each adapter casts its input to fp32 and keeps its own copy.
    assert saved_bytes_per_token(cfg, RunConfig(lora_dropout=0.0, **qv), act_bytes=2) == frozen + 4 * 2 * h + 4 * 2 * 8
    # Dropout keeps the dropped-out input and the noise (fp32 on a CPU) or a 1-byte mask (CUDA).
    assert saved_bytes_per_token(cfg, RunConfig(lora_dropout=0.1, **qv), 2, device="cpu") == frozen + 8 * 2 * h + 64
    assert saved_bytes_per_token(cfg, RunConfig(lora_dropout=0.1, **qv), 2, device="cuda") == frozen + 5 * 2 * h + 64
    every = saved_bytes_per_token(cfg, RunConfig(r=8, lora_dropout=0.0, target_modules="all-linear"), 2)
    assert every == frozen + 4 * (6 * h + i) + 4 * 7 * 8
    assert saved_bytes_per_token(cfg, RunConfig(method="full"), 2) == frozen + 2 * (3 * h + i + 2 * h)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("change", [{}, {"dtype": "bfloat16", "target_modules": "all-linear", "r": 8},
                                    {"dtype": "bfloat16", "lora_dropout": 0.0}, {"method": "full"},
                                    {"method": "qlora", "dtype": "bfloat16", "compute_dtype": "bfloat16"}])
def test_estimator_matches_one_measured_training_step(tiny_dir, change, device):
    """The estimator predicts, from the config alone, the tensors one training step really holds.

    On CUDA the dropout mask is 1 byte (the fused kernel's) and the measure is max_memory_allocated."""
    from peftlab import adapters, data, measure, memory, models, train
    from peftlab.config import preset

    config = preset("shakespeare-tiny", device=device, **change)
    tokenizer = models.load_tokenizer(config.model_name)
    model = models.load_model(config)
    train_ds, *_ = train.load_data(config, tokenizer)
    if config.method == "full":
        model.requires_grad_(True)
    else:
        model = adapters.attach(model, config, total_step=10)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step = measure.measure_training_step(model, data.longest_batch(train_ds, tokenizer, 4))
    b, seq_len = step.batch_shape
    assert b == 4 and seq_len == max(len(r["input_ids"]) for r in train_ds)
    predicted = memory.estimate(config.model_name, config, seq_len=seq_len, batch_size=b, device=device,
                                runtime_bytes=0)
    assert step.bytes > step.at_start > 0
    assert abs(predicted.total / step.bytes - 1) <= 0.15, (predicted.table(), step)
    # Measuring leaves the model as it was: no gradients, same weights.
    assert all(p.grad is None for p in model.parameters())
    assert all(p.equal(before[n]) for n, p in model.named_parameters())


def test_measured_step_counts_what_the_step_allocates(tiny_dir):
    """The measurement follows the batch: twice the rows, more memory; and it counts the optimizer's states."""
    import torch
    from peftlab import adapters, data, measure, models, train
    from peftlab.config import preset

    config = preset("shakespeare-tiny")
    tokenizer = models.load_tokenizer(config.model_name)
    model = adapters.attach(models.load_model(config), config, total_step=10)
    train_ds, *_ = train.load_data(config, tokenizer)
    small = measure.measure_training_step(model, data.longest_batch(train_ds, tokenizer, 2))
    large = measure.measure_training_step(model, data.longest_batch(train_ds, tokenizer, 8))
    assert large.bytes - large.at_start > 1.5 * (small.bytes - small.at_start)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    model(**data.longest_batch(train_ds, tokenizer, 2)).loss.backward()
    optimizer.step()
    with_states = measure.measure_training_step(model, data.longest_batch(train_ds, tokenizer, 2), optimizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # AdamW's m and v in fp32, and its step count per parameter as a 0-dim fp32 tensor
    assert with_states.at_start - small.at_start == 8 * sum(p.numel() for p in trainable) + 4 * len(trainable)
