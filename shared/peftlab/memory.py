"""Peak training memory: predicted before anything is loaded, and measured while training.

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
So the peak holds the larger of the two, not their sum. `measure_training_step`
measures the same tensors for one step (the profiler's allocation events on a
CPU, `max_memory_allocated` on CUDA); `bench/memory.py` checks the estimator
against processes' resident peaks (README, Performance).

Serving memory per weight format (Session 5) is here too: `memory_by_format`
runs `format_run` for float32, bfloat16 and NF4 weights, each in a fresh
process (`python -m peftlab.memory`), and `gpu_prediction` gives the
estimator's numbers for a GPU with the KV cache (`kv_cache_bytes`).

Longer than the package's usual 400 lines on purpose: one idea, memory, from
the bytes-per-parameter derivation to the measurements that check it, so a
reader follows each prediction to the number that tests it without leaving
the file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from .config import LORA_FAMILY, RunConfig, with_overrides

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

    `device` only sets defaults: the dtype for dtype='auto' (`models.resolve_dtype`:
    on cuda bf16 unless `bf16` is False, as on a T4, where it is float32; on cpu and
    mps what this machine computes natively unless `bf16` says otherwise) and the runtime overhead (CUDA context is outside
    max_memory_allocated; a CPU process's resident peak includes Python and
    the libraries, about 0.45 GiB).
    """
    from .adapters import lora_counts_on_meta
    from .models import meta_model, model_config, run_dtypes

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


# ------------------------------------------------------- measured peak memory
def _rss_peak_bytes() -> int | None:
    """VmHWM (resident high-water mark) of this process, Linux only."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclass
class PeakMemory:
    bytes: int = 0
    source: str = ""
    start_bytes: int = 0  # what was already resident (allocated on CUDA) when the block began

    @property
    def gib(self) -> float:
        return self.bytes / 2**30

    @property
    def mib(self) -> float:
        return self.bytes / 2**20


@contextmanager
def track_peak_memory(device="cpu"):
    """Peak memory during the block: CUDA max_memory_allocated, or the process's resident peak.

    On Linux the resident high-water mark is reset at entry, so the number is the
    peak of this phase, not of model loading before it. Elsewhere a sampling
    thread polls psutil every 10 ms.
    """
    import torch

    device = torch.device(device)
    result = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        result.start_bytes = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result.bytes, result.source = torch.cuda.max_memory_allocated(device), "cuda max_memory_allocated"
        return
    if _reset_rss_peak() and _rss_peak_bytes() is not None:
        result.start_bytes = _rss_peak_bytes() or 0
        yield result
        result.bytes, result.source = _rss_peak_bytes() or 0, "process resident peak (VmHWM)"
        return
    import psutil

    proc, stop, peak = psutil.Process(os.getpid()), threading.Event(), [0]
    result.start_bytes = proc.memory_info().rss

    def poll():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result.bytes, result.source = peak[0], "process resident peak (sampled)"


# ------------------------------------------- measured tensor peak of one step
@dataclass
class StepPeak:
    """Tensor memory of one training step (forward + backward), measured."""

    bytes: int  # tensors alive at the step's peak: `at_start` plus the step's own peak
    at_start: int  # weights, gradients and optimizer states alive before the step
    batch_shape: tuple
    source: str

    @property
    def gib(self) -> float:
        return self.bytes / GiB


def live_tensor_bytes(model, optimizer=None) -> int:
    """Bytes of the distinct storages behind a model's parameters, buffers and gradients,
    and an optimizer's states (AdamW's m and v)."""
    import torch

    storages = {}

    def add(t):
        if torch.is_tensor(t) and t.device.type != "meta":
            s = t.untyped_storage()
            storages[(t.device, s.data_ptr())] = s.nbytes()

    for p in model.parameters():
        add(p)
        add(p.grad)
    for b in model.buffers():
        add(b)
    if optimizer is not None:
        for state in getattr(optimizer, "optimizer", optimizer).state.values():
            for value in state.values():
                add(value)
    return sum(storages.values())


def _profiled_peak(fn) -> int:
    """Peak bytes newly allocated by the CPU allocator while `fn()` runs (torch.profiler's
    allocation events carry the allocator's running total)."""
    import os

    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    # A CUDA build of torch on a machine without a GPU (Colab's CPU runtime) has kineto log
    # "gpuGetDeviceCount failed" at ERROR level when profiling starts; this profile is CPU-only, so
    # only kineto's fatal messages are kept (level 5; set KINETO_LOG_LEVEL yourself to see more).
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    # acc_events=True: one cycle only, so nothing accumulates; without it torch 2.11+ warns at every
    # profile() that it "clears events at the end of each cycle" (a UserWarning a student would see).
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, acc_events=True) as prof:
        fn()
    totals, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            f = event.extra_fields
            totals.append((event.start_time_ns, f.total_allocated, f.alloc_size))
    if not totals:
        return 0
    totals.sort()
    first = totals[0]
    baseline = first[1] - first[2]  # the running total just before the first allocation
    return max(0, max(t[1] for t in totals) - baseline)


def measure_training_step(model, batch: dict, optimizer=None) -> StepPeak:
    """Run one forward and backward pass on `batch` and measure the peak of live tensors.

    What `torch.cuda.max_memory_allocated` reports on a GPU, also on a CPU, where
    the profiler's allocation events give the same count. Gradients are set to
    None afterwards and the model's train/eval mode is restored, so a trained
    model is left as it was. Compare with `estimate(..., runtime_bytes=0)`: the
    estimator's tensors, without the runtime a process adds.
    """
    import torch

    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    was_training = model.training
    model.train()
    model.zero_grad(set_to_none=True)
    at_start = live_tensor_bytes(model, optimizer)

    def step():
        model(**batch).loss.backward()

    try:
        if device.type == "cuda":
            # A warm-up step first: the first matrix products on a stream allocate cuBLAS's workspace
            # through the same allocator. It stays for the process's life, so it belongs to the
            # runtime, not to a step.
            step()
            model.zero_grad(set_to_none=True)
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            step()
            torch.cuda.synchronize(device)
            peak, source = at_start + torch.cuda.max_memory_allocated(device) - before, "cuda max_memory_allocated"
        else:
            peak, source = at_start + _profiled_peak(step), "torch.profiler allocation events"
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return StepPeak(bytes=peak, at_start=at_start, batch_shape=tuple(batch["input_ids"].shape), source=source)


FORMATS = ("float32", "bfloat16", "nf4")  # weight formats of `memory_by_format`


# ------------------------------------------------ memory per weight format (Session 5)
def resident_bytes() -> int:
    """VmRSS (resident now) of this process, Linux only; 0 where /proc has no such line."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def format_run(model_name: str, fmt: str, device: str = "cpu", batch_size: int = 4, prompt_tokens: int = 32,
               new_tokens: int = 16) -> dict:
    """In this process: load `model_name` with weights in `fmt`, generate one batch; bytes, peaks and speed.

    Meant for a fresh process (`memory_by_format` starts one per format), so
    that one format's memory never counts in another's peak. On a CPU the
    peaks are resident memory (Python and the libraries included, see
    `before_load_bytes`); loading reads the checkpoint through a memory map and
    converts it, so the load peak can exceed what the loaded weights hold.
    On CUDA they are `max_memory_allocated`.
    """
    import torch

    from . import models
    from .generation import InferenceError, prompt_ids, timed_generate

    if fmt not in FORMATS:
        raise InferenceError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}.")
    dtype = "float32" if fmt == "float32" else "bfloat16"
    config = RunConfig(model_name=model_name, device=device, dtype=dtype, compute_dtype=dtype)
    dev = models.pick_device(device)
    tokenizer = models.load_tokenizer(model_name)
    ids = prompt_ids(tokenizer, batch_size, prompt_tokens)
    before = resident_bytes() if dev.type == "cpu" else torch.cuda.memory_allocated(dev)
    kwargs = {"dtype": getattr(torch, dtype)}
    if fmt == "nf4":
        kwargs["quantization_config"] = models.quantization_config(with_overrides(config, method="qlora"),
                                                                   getattr(torch, dtype))
        kwargs["device_map"] = {"": dev.index or 0} if dev.type == "cuda" else {"": "cpu"}
    from transformers import AutoModelForCausalLM

    # load_tokenizer above already turned a missing model into models' clear error
    model = AutoModelForCausalLM.from_pretrained(models.resolve_model_path(model_name), **kwargs)
    if fmt != "nf4":
        model.to(dev)
    model.eval()
    weights = measured_weights_bytes(model)
    load_peak = _rss_peak_bytes() if dev.type == "cpu" else torch.cuda.max_memory_allocated(dev)
    timed_generate(model, ids, 2, pad_token_id=tokenizer.pad_token_id)  # warm-up
    with track_peak_memory(dev) as peak:
        res = timed_generate(model, ids, new_tokens, pad_token_id=tokenizer.pad_token_id)
    return {"format": fmt, "model": model_name, "device": dev.type, "weights_bytes": weights,
            "before_load_bytes": before, "load_peak_bytes": load_peak, "generate_peak_bytes": peak.bytes,
            "process_peak_bytes": max(load_peak, peak.bytes),
            "peak_source": peak.source, "batch_size": batch_size, "new_tokens": new_tokens,
            "tokens_per_s": batch_size * new_tokens / res["total_s"], "torch_threads": torch.get_num_threads(),
            "predicted_weights_bytes": weights_bytes(model_name, "nf4" if fmt == "nf4" else fmt)}


def bitsandbytes_runs(device: str = "cpu") -> tuple[bool, str]:
    """(True, '') if bitsandbytes can quantize here; otherwise (False, why)."""
    import importlib.util

    import torch

    from .models import pick_device

    if importlib.util.find_spec("bitsandbytes") is None:
        return False, "bitsandbytes is not installed (pip install bitsandbytes)"
    try:
        import bitsandbytes.functional as bnbf

        w = torch.randn(64, 64, device=pick_device(device))
        q, state = bnbf.quantize_4bit(w, quant_type="nf4")
        bnbf.dequantize_4bit(q, state)
    except Exception as exc:  # any backend failure means: not here
        return False, f"bitsandbytes cannot quantize on {device}: {type(exc).__name__}: {exc}"
    return True, ""


def memory_by_format(model_name: str, formats=FORMATS, device: str = "cpu", batch_size: int = 4,
                     new_tokens: int = 16, progress: bool = True, timeout_s: float = 1800) -> list[dict]:
    """`format_run` for each format, each in a fresh Python process; nf4 is skipped (with the reason) where
    bitsandbytes does not run."""
    from tqdm.auto import tqdm

    from .generation import InferenceError

    rows = []
    for fmt in tqdm(list(formats), desc="formats", disable=not progress):
        if fmt not in FORMATS:
            raise InferenceError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}.")
        if fmt == "nf4":
            ok, why = bitsandbytes_runs(device)
            if not ok:
                rows.append({"format": fmt, "skipped": why})
                continue
        args = json.dumps({"model_name": model_name, "fmt": fmt, "device": device, "batch_size": batch_size,
                           "new_tokens": new_tokens})
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        proc = subprocess.run([sys.executable, "-m", "peftlab.memory", args], capture_output=True, text=True,
                              timeout=timeout_s, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"measuring {fmt} weights of {model_name} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


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


def main(argv=None) -> int:
    """`python -m peftlab.memory '<json>'`: one `format_run` in this process, its record as JSON on stdout."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    args = json.loads((argv or sys.argv[1:])[0])
    print(json.dumps(format_run(**args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
