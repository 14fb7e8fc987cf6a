"""Peak training memory, predicted before anything is loaded (measured in `peftlab.measure`).

    peak ~= base weights + trainable weights + gradients + AdamW states
            + activations (+ logits) + runtime

Base weights depend on the storage format: 4 bytes/param in fp32, 2 in
bf16/fp16, about 0.52 in NF4 with double quantization (QLoRA, Dettmers et al.
2023, section 3: 4 bits + an 8-bit absmax per 64 weights + an fp32 constant
per 256 absmax = 4 + 8/64 + 32/(64*256) = 4.127 bits). For training, peft's
prepare_model_for_kbit_training casts embeddings, norms and the LM head to fp32,
and with them every activation (see `estimate`).

Trainable weights: peft keeps adapter weights in fp32 (autocast_adapter_dtype),
so each trainable LoRA parameter costs 4 (weight) + 4 (grad) + 8 (AdamW m and v)
= 16 bytes. Full fine-tuning keeps weights, grads and AdamW states in the
weight dtype: 16 bytes/param in fp32, 8 in bf16 (16 with fp32 master weights,
the mixed-precision recipe the ZeRO paper counts).

Activations are the tensors a Qwen2 decoder layer saves for backward, per
token (h = hidden size, i = MLP size; see `saved_bytes_per_token`): each
RMSNorm keeps its input in fp32 (it computes in fp32 whatever the model's
dtype); a fused attention kernel keeps q, k, v and its output (4h); the MLP
keeps gate, SiLU and up outputs (3i). On CUDA, fp32 activations with grouped
KV heads (QLoRA, or fp32 on a T4) run attention's math kernel instead, which
keeps q, k and v repeated to h and the softmax probabilities, heads x seq_len
per token (`math_attention`). A linear layer
keeps its input only if its weight trains: full fine-tuning adds the inputs of
every projection (3h + i) and the norms' outputs (2h). LoRA keeps each
adapter's input in the adapter's dtype, fp32: with dropout, every adapted
projection keeps its own dropped-out copy plus the dropout noise (on a CPU
at::dropout multiplies by a noise tensor of the input's dtype; CUDA's fused
kernel keeps a 1-byte mask), so 8 (CPU) or 5 (CUDA) bytes per input feature
and adapted projection; without dropout, a bf16 model still makes one fp32
copy per adapter, and an fp32 model shares one input among q, k and v. Each
adapter also keeps its rank-r intermediate.
Gradient checkpointing keeps only each layer's input, plus one layer's worth
while it is recomputed.

The peak comes at the start of backward, when every activation is alive; by
the end of backward the activations are freed and the gradients allocated
(Trainer and the benchmark free gradients before each forward, `set_to_none`).
So the peak holds the larger of the two, not their sum. The measurements
that check these predictions live in `peftlab.measure`
(`measure.measure_training_step` for one step's tensors, `bench/memory.py`
against processes' resident peaks; README, Performance).

Serving memory per weight format (Session 5): `weights_bytes` predicts the
weights in fp32, bf16 or NF4 (`measure.memory_by_format` measures them), and
`gpu_prediction` gives the estimator's numbers for a GPU with the KV cache
(`kv_cache_bytes`).

`measured_weights_bytes` stays here, beside `weights_bytes` which it checks:
exercise 4's notebook, as students have it, calls `memory.measured_weights_bytes`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import LORA_FAMILY, RunConfig

GiB = 2**30
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def nf4_bytes_per_param(double_quant: bool = True, blocksize: int = 64) -> float:
    """Bytes per weight of a bitsandbytes 4-bit tensor, quantization constants included."""
    if double_quant:
        return 0.5 + 1 / blocksize + 4 / (blocksize * 256)  # 8-bit absmax + fp32 per 256 blocks
    return 0.5 + 4 / blocksize  # fp32 absmax per block


@dataclass
class MemoryEstimate:
    base_weights: float
    trainable_weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    runtime: float
    trainable_params: int
    total_params: int

    @property
    def total(self) -> float:
        transient = max(self.gradients, self.activations + self.logits)  # see the module docstring
        return self.base_weights + self.trainable_weights + self.optimizer + transient + self.runtime

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}

    def table(self) -> str:
        rows = [
            ("base weights", self.base_weights),
            ("trainable weights", self.trainable_weights),
            ("AdamW states", self.optimizer),
            ("gradients (a)", self.gradients),
            ("activations (b)", self.activations),
            ("logits + loss (b)", self.logits),
            ("runtime", self.runtime),
            ("total, max(a, b)", self.total),
        ]
        width = max(len(r[0]) for r in rows)
        lines = [f"{name:<{width}}  {value / GiB:9.3f} GiB" for name, value in rows]
        lines.insert(-1, "-" * (width + 15))
        return "\n".join(lines)


LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_BYTES = 4  # peft keeps adapter weights in fp32 (autocast_adapter_dtype) and casts each input to them


def _in_features(cfg) -> dict[str, int]:
    h, i = cfg.hidden_size, cfg.intermediate_size
    return {name: (i if name == "down_proj" else h) for name in LINEARS}


def _trained_linears(config: RunConfig) -> set[str]:
    if config.method == "full":
        return set(LINEARS)
    if config.method in LORA_FAMILY:
        targets = config.target_modules
        names = set(LINEARS) if targets in ("all-linear", None) else {t.rsplit(".", 1)[-1] for t in targets}
        return names & set(LINEARS)
    return set()


def saved_bytes_per_token(cfg, config: RunConfig, act_bytes: int, device: str = "cuda", seq_len: int = 0) -> int:
    """Bytes one decoder layer saves for backward, per token (see the module docstring).

    `act_bytes` is the activations' element size (2 in bf16/fp16, 4 in fp32).
    `seq_len` matters only where attention keeps its probabilities (`math_attention`).
    """
    h, i = cfg.hidden_size, cfg.intermediate_size
    # Qwen2/Llama RMSNorm computes in fp32 and keeps its fp32 input; the MLP keeps gate, SiLU and
    # up outputs. A fused attention kernel keeps q, k, v and its output (4h); the math kernel keeps
    # q, k and v repeated to h, and the softmax probabilities, heads x seq_len per token.
    if math_attention(cfg, act_bytes, device):
        attention = act_bytes * (3 * h + cfg.num_attention_heads * seq_len)
    else:
        attention = act_bytes * 4 * h
    saved = 2 * h * max(act_bytes, 4) + attention + act_bytes * 3 * i
    trained = _trained_linears(config)
    shared_inputs = h * bool(trained & {"q_proj", "k_proj", "v_proj"})  # one input feeds q, k and v
    shared_inputs += h * ("o_proj" in trained) + h * bool(trained & {"gate_proj", "up_proj"})
    shared_inputs += i * ("down_proj" in trained)
    if config.method == "full":
        return saved + act_bytes * (2 * h + shared_inputs)  # trainable norm weights keep their outputs too
    if config.method not in LORA_FAMILY:
        return saved
    per_module_in = sum(_in_features(cfg)[name] for name in trained)
    if config.lora_dropout > 0:
        # Each adapter drops out its own fp32 copy of the input and keeps the result for lora_A.
        # On CUDA the fused kernel keeps a 1-byte mask; on a CPU, at::dropout multiplies by a
        # noise tensor of the input's dtype and keeps that.
        mask = 1 if str(device).startswith("cuda") else ADAPTER_BYTES
        saved += (ADAPTER_BYTES + mask) * per_module_in
    elif act_bytes != ADAPTER_BYTES:
        saved += ADAPTER_BYTES * per_module_in  # each adapter keeps its own fp32 copy of the input
    else:
        saved += act_bytes * shared_inputs  # fp32 model, no dropout: the adapters share one input
    return saved + ADAPTER_BYTES * config.r * len(trained)  # the rank-r intermediate of each adapter


def math_attention(cfg, act_bytes: int, device: str) -> bool:
    """Whether PyTorch's scaled_dot_product_attention falls back to its math kernel in training.

    On CUDA the flash kernel takes only fp16/bf16, and the memory-efficient kernel does not take
    grouped key/value heads (GQA, as in every Qwen2.5): fp32 activations with GQA, as in QLoRA
    (see `estimate`) or an fp32 run on a T4, use the math kernel, which keeps the attention
    probabilities. Measured on an H200 (README, Performance). On a CPU the flash kernel takes
    fp32 and GQA.
    """
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    return str(device).startswith("cuda") and act_bytes == 4 and kv_heads < heads


def _split_params(model) -> tuple[int, int]:
    """(params in decoder-layer Linear weights, everything else) of a meta model."""
    import torch

    linear = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and ".layers." in name
    )
    total = model.num_parameters()
    return linear, total - linear


def estimate(
    model_name: str,
    config: RunConfig,
    seq_len: int,
    batch_size: int | None = None,
    device: str = "cuda",
    runtime_bytes: float | None = None,
    bf16: bool | None = None,
) -> MemoryEstimate:
    """Peak training memory of `config` on `model_name` (no weights are loaded).

    `device` only sets defaults: the dtype for dtype='auto' (`devices.resolve_dtype`:
    on cuda bf16 unless `bf16` is False, as on a T4, where it is float32; on cpu and
    mps what this machine computes natively unless `bf16` says otherwise) and the runtime overhead (CUDA context is outside
    max_memory_allocated; a CPU process's resident peak includes Python and
    the libraries, about 0.45 GiB).
    """
    from .adapters import lora_counts_on_meta
    from .devices import run_dtypes
    from .models import meta_model, model_config

    cfg = model_config(model_name)
    b = batch_size or config.per_device_train_batch_size
    if bf16 is None and device == "cuda":
        bf16 = True  # predicting for a GPU this machine may not have: an Ampere or newer one
    dtype, _ = run_dtypes(config, device, bf16_supported=bf16)
    wbytes = DTYPE_BYTES[dtype]
    # k-bit training (models.load_model) runs prepare_model_for_kbit_training, which casts every
    # weight that is not quantized to fp32: embeddings, norms, LM head. The residual stream is then
    # fp32 from the embedding on, and bitsandbytes returns a quantized layer's output in its input's
    # dtype, so activations are fp32 whatever the compute dtype (that sets only the matmul's).
    kbit = config.quantization in ("4bit", "8bit")
    abytes = 4 if kbit else wbytes

    linear, other = _split_params(meta_model(cfg))
    counts = lora_counts_on_meta(model_name, config)
    base_params = linear + other
    if config.quantization == "4bit":
        base = linear * nf4_bytes_per_param(config.double_quant) + other * 4
    elif config.quantization == "8bit":
        base = linear * (1 + 4 / 4096) + other * 4  # int8 + fp32 scale per row (approx.)
    else:
        base = base_params * wbytes

    if config.method == "full":
        trainable_w, grads, optim = 0.0, base_params * wbytes, base_params * 2 * wbytes
    else:
        n = counts.trainable
        trainable_w, grads, optim = n * 4.0, n * 4.0, n * 8.0

    h = cfg.hidden_size
    layers = cfg.num_hidden_layers
    tokens = b * seq_len
    per_layer_token = saved_bytes_per_token(cfg, config, abytes, device, seq_len)
    if config.gradient_checkpointing:
        acts = tokens * layers * h * abytes + tokens * per_layer_token
    else:
        acts = tokens * layers * per_layer_token
    # Logits in the weight dtype, their fp32 upcast for the loss, and its gradient.
    logits = tokens * cfg.vocab_size * (abytes + 4 + 4)
    runtime = runtime_bytes if runtime_bytes is not None else (0.0 if device == "cuda" else 0.45 * GiB)
    return MemoryEstimate(
        base_weights=base,
        trainable_weights=trainable_w,
        gradients=grads,
        optimizer=optim,
        activations=acts,
        logits=logits,
        runtime=runtime,
        trainable_params=counts.trainable if config.method != "full" else base_params,
        total_params=counts.total,
    )


def weights_bytes(model_name: str, fmt: str = "bfloat16", double_quant: bool = True) -> float:
    """Memory of the base weights alone in fp32, bf16/fp16 or nf4."""
    from .models import meta_model, model_config

    linear, other = _split_params(meta_model(model_config(model_name)))
    if fmt == "nf4":
        return linear * nf4_bytes_per_param(double_quant) + other * 2
    return (linear + other) * DTYPE_BYTES[fmt]


def merge_phase_bytes(model_name: str, compute_dtype: str = "float32", double_quant: bool = True) -> float:
    """Weights alive while exercise 4 compares QLoRA merges, one merge at a time.

    The 4-bit model with its adapter stays (it is the reference: decoder linears
    in NF4, everything else in `compute_dtype`), plus one merged model in
    `compute_dtype`. Activations of a few short evaluation batches are left out.
    """
    from .models import meta_model, model_config

    linear, other = _split_params(meta_model(model_config(model_name)))
    four_bit = linear * nf4_bytes_per_param(double_quant) + other * DTYPE_BYTES[compute_dtype]
    return four_bit + (linear + other) * DTYPE_BYTES[compute_dtype]


def measured_weights_bytes(model) -> int:
    """Bytes a loaded model's weights really occupy: parameters, buffers and 4-bit quantization state.

    `model.get_memory_footprint()` counts parameters and buffers only, so for a
    bitsandbytes 4-bit model it misses the absmax constants and codebooks that
    live in each weight's `quant_state`.
    """
    import torch

    def state_bytes(state) -> int:
        if state is None:
            return 0
        total = 0
        for value in vars(state).values():
            if torch.is_tensor(value):
                total += value.numel() * value.element_size()
            elif type(value).__name__ == "QuantState":
                total += state_bytes(value)
        return total

    total = 0
    for p in model.parameters():
        total += p.numel() * p.element_size() + state_bytes(getattr(p, "quant_state", None))
    total += sum(b.numel() * b.element_size() for b in model.buffers())
    return total


def kv_cache_bytes(model_name: str, batch_size: int, tokens: int, dtype_bytes: int = 2) -> int:
    """Keys and values of every layer for `batch_size` sequences of `tokens` tokens.

    2 (K and V) * layers * key-value heads * head dim * bytes, per token; grouped-query
    attention (Qwen2.5: 2 to 8 KV heads) keeps it far below 2 * layers * hidden.
    """
    from .models import model_config

    cfg = model_config(model_name)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * dtype_bytes * batch_size * tokens


def gpu_prediction(model_names=("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-3B-Instruct", "Qwen/Qwen2.5-7B-Instruct"),
                   batch_size: int = 16, tokens: int = 512) -> list[dict]:
    """PREDICTED GPU memory for serving (no GPU used): weights in bf16 and NF4 (`weights_bytes`)
    and a bf16 KV cache for `batch_size` sequences of `tokens` tokens. The CUDA context and
    activations come on top."""
    rows = []
    for name in model_names:
        kv = kv_cache_bytes(name, batch_size, tokens)
        rows.append({"model": name, "bf16_weights_bytes": weights_bytes(name, "bfloat16"),
                     "nf4_weights_bytes": weights_bytes(name, "nf4"), "kv_cache_bytes": kv,
                     "batch_size": batch_size, "tokens": tokens, "kind": "prediction (peftlab.memory estimator)"})
    return rows
