"""Serving a LoRA model: speed (tokens/s, latency) and memory, merged or not.

Session 5 in code. One base model carries LoRA adapters; it can answer in
three ways, the *variants* measured here:

- unmerged: the base weights stay as they are and every adapted layer adds
  s * B @ (A @ x) on the side: two extra small matrix products per layer and token;
- merged: W <- W + s * B @ A folded into the weights once (`merge_and_unload`), so
  the model has the base's shapes and costs what the base costs (LoRA paper,
  Hu et al. 2021, section 4.1: "no additional inference latency");
- mixed: several adapters in one batch, row i through adapter names[i] (peft's
  `adapter_names=`), which runs every adapter on its own sub-batch in every layer.

Each is timed with greedy decoding of a fixed number of new tokens (EOS is
held back, so every run produces exactly that many) on prompts of a fixed
length (no padding), for each batch size, with and without the KV cache.
Warm-up calls are not counted; each cell is repeated and reported as a median
with its min and max, and the variants take turns within a repeat, so a busy
moment of the machine hits all of them alike. A transformers streamer receives
each new token as generate produces it (after its copy to the CPU, so on a GPU
the time is real): first-token latency is the time to the first one (the
prefill), per-token latency the mean gap between the others (decoding).

Merging has a price when an adapter is switched: `unmerge_adapter` subtracts
the update again, and in 16-bit weights W + dW - dW is not W. `merge_roundtrip`
measures what is left. Memory compares the weights' bytes and the process's
resident peak for the same model in float32, bfloat16 and 4-bit NF4
(bitsandbytes), each in a fresh process; `gpu_prediction` gives the
estimator's numbers for Qwen2.5 on a GPU, a prediction, not a measurement.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import adapters, memory, models
from .config import RunConfig, with_overrides
from .files import package_file

VARIANTS = ("unmerged", "merged", "mixed")
FORMATS = ("float32", "bfloat16", "nf4")  # weight formats of `memory_by_format`


class InferenceError(ValueError):
    """A measurement asked for something that cannot work; the message names the argument and the fix."""


# ------------------------------------------------------------------ inputs
def check_batch_sizes(batch_sizes) -> list[int]:
    sizes = list(batch_sizes)
    bad = [b for b in sizes if isinstance(b, bool) or not isinstance(b, int) or b < 1]
    if not sizes or bad:
        raise InferenceError(f"batch_sizes={sizes!r}: every batch size must be an integer >= 1, e.g. [1, 2, 4, 8, 16].")
    return sizes


def check_adapter_names(model, names) -> list[str]:
    """`names` if every one is an adapter loaded on `model` (or '__base__'); otherwise say which are not."""
    loaded = sorted(getattr(model, "peft_config", {}))
    if not loaded:
        raise InferenceError("adapter_names given, but the model holds no adapters: load them with "
                             "peftlab.adapters.load_adapter(model, path, adapter_name=...) first.")
    names = list(names)
    unknown = sorted({n for n in names if n not in loaded and n != "__base__"})
    if not names or unknown:
        raise InferenceError(f"adapter_names: {unknown or 'empty'} not loaded on this model; loaded: {loaded} "
                             "('__base__' means no adapter).")
    return names


def prompt_ids(tokenizer, batch_size: int, prompt_tokens: int) -> torch.Tensor:
    """(batch_size, prompt_tokens) token ids cut from the course's general text, a different window per row.

    Every row has the same length, so nothing is padded and every row costs the same.
    """
    check_batch_sizes([batch_size])
    if prompt_tokens < 1:
        raise InferenceError(f"prompt_tokens={prompt_tokens}: need at least 1 prompt token.")
    text = package_file("general_text.txt").read_text()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    stride = 7
    need = prompt_tokens + stride * (batch_size - 1)
    ids = (ids * (need // len(ids) + 1))[:need]
    return torch.tensor([ids[i * stride: i * stride + prompt_tokens] for i in range(batch_size)])


# ------------------------------------------------------------------ models
def untrained_adapters(model, config: RunConfig, names: list[str]):
    """Put LoRA adapters called `names` (the recipe of `config`) on `model`, with A and B both random.

    Timing does not depend on what an adapter learned, only on its rank and
    targets. peft's usual initialisation sets B = 0, which would make merging a
    no-op and hide its rounding, so these use `init_lora_weights=False` (A and B
    keep torch's default random initialisation), so their update is far larger
    than a trained adapter's; `merge_roundtrip` reports its size relative to the weights.
    """
    from peft import get_peft_model

    if not names:
        raise InferenceError("untrained_adapters: give at least one adapter name.")
    adapters.check_target_modules(model, config)
    pcfg = adapters.peft_config(config)
    pcfg.init_lora_weights = False
    pcfg.lora_dropout = 0.0
    torch.manual_seed(config.seed)
    model = get_peft_model(model, pcfg, adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, copy.deepcopy(pcfg))
    model.set_adapter(names[0])
    return model.eval()


def load_served(config: RunConfig, adapter_dirs: dict[str, str] | None = None, names=("one", "two", "three")):
    """The base model of `config` with adapters: the saved ones in `adapter_dirs`, else untrained ones."""
    model = models.load_model(with_overrides(config, method="lora"))
    if adapter_dirs:
        for name, path in adapter_dirs.items():
            model = adapters.load_adapter(model, path, adapter_name=name)
        model.set_adapter(next(iter(adapter_dirs)))
        return model.eval()
    return untrained_adapters(model, config, list(names))


def merged_copy(model, adapter: str):
    """A plain model with `adapter` folded into a copy of the weights (the served model keeps its adapters)."""
    check_adapter_names(model, [adapter])
    clone = copy.deepcopy(model)
    clone.set_adapter(adapter)
    return clone.merge_and_unload().eval()


@dataclass
class Variant:
    """One way of serving: a model, and the adapter of each row (None: the model's active adapter)."""

    name: str
    model: object
    adapters: list[str] | None = None  # cycled over the rows of a batch

    def row_adapters(self, batch_size: int) -> list[str] | None:
        if self.adapters is None:
            return None
        return [self.adapters[i % len(self.adapters)] for i in range(batch_size)]


def build_variants(model, adapter_names: list[str], variants=VARIANTS) -> dict[str, Variant]:
    """The served model as unmerged (first adapter active), merged (a merged copy) and mixed (all adapters).

    The mixed variant gives row i the adapter adapter_names[i % len(adapter_names)].
    """
    names = check_adapter_names(model, adapter_names)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise InferenceError(f"variants: {unknown} unknown; choose from {list(VARIANTS)}.")
    model.set_adapter(names[0])
    out = {}
    for v in variants:
        if v == "unmerged":
            out[v] = Variant(v, model)
        elif v == "merged":
            out[v] = Variant(v, merged_copy(model, names[0]))
        else:
            out[v] = Variant(v, model, names)
    return out


# ------------------------------------------------------------------ timing
def _streamer_base():
    from transformers.generation.streamers import BaseStreamer

    return BaseStreamer


class TokenClock(_streamer_base()):
    """A generate streamer that notes the time each new token arrives (the prompt's own put is skipped)."""

    def __init__(self):
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value):
        if self._prompt_seen:
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self):
        pass


@torch.no_grad()
def timed_generate(model, input_ids: torch.Tensor, new_tokens: int, use_cache: bool = True,
                   adapter_names: list[str] | None = None, pad_token_id: int | None = None) -> dict:
    """Greedy generation of exactly `new_tokens` tokens per row, timed token by token.

    Returns the new tokens (B, new_tokens), the wall time, the first-token latency
    (prompt in, first token out) and the gaps between later tokens.
    """
    if new_tokens < 1:
        raise InferenceError(f"new_tokens={new_tokens}: generate at least 1 token.")
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    extra = {} if adapter_names is None else {"adapter_names": list(adapter_names)}
    clock = TokenClock()
    start = time.perf_counter()
    out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=use_cache,
                         streamer=clock, pad_token_id=pad_token_id, temperature=None, top_p=None, top_k=None,
                         **extra)
    total = time.perf_counter() - start
    gaps = [b - a for a, b in zip(clock.times, clock.times[1:])]
    return {"tokens": out[:, input_ids.shape[1]:].cpu(), "total_s": total, "first_token_s": clock.times[0] - start,
            "gaps_s": gaps}


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(variants: dict[str, Variant], tokenizer, batch_sizes=(1, 2, 4, 8, 16), use_cache=(True, False),
            prompt_tokens: int = 32, new_tokens: int = 16, repeats: int = 3, warmup: int = 1,
            no_cache_batch_sizes=None, progress: bool = True) -> list[dict]:
    """One record per (variant, batch size, KV cache on/off): tokens/s and latencies, median of `repeats`.

    tokens/s counts generated tokens over the whole generate call (prefill
    included): batch_size * new_tokens / wall time. `no_cache_batch_sizes`
    limits the runs without the cache (they cost far more) to some batch sizes;
    None runs them at every size.
    """
    from tqdm.auto import tqdm

    sizes = check_batch_sizes(batch_sizes)
    no_cache = sizes if no_cache_batch_sizes is None else check_batch_sizes(no_cache_batch_sizes)
    if repeats < 1 or warmup < 0:
        raise InferenceError(f"repeats={repeats}, warmup={warmup}: need repeats >= 1 and warmup >= 0.")
    if not variants:
        raise InferenceError("variants: nothing to measure; build them with build_variants(model, names).")
    cells = [(cache, b) for cache in use_cache for b in (sizes if cache else no_cache)]
    pad = tokenizer.pad_token_id
    records = []
    bar = tqdm(total=len(cells) * len(variants) * (repeats + warmup), desc="generate", disable=not progress)
    for cache, b in cells:
        ids = prompt_ids(tokenizer, b, prompt_tokens)
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        for r in range(warmup + repeats):
            for name, v in variants.items():  # variants take turns: machine load hits all alike
                bar.set_postfix_str(f"{name} batch {b} cache {'on' if cache else 'off'}")
                res = timed_generate(v.model, ids, new_tokens, cache, v.row_adapters(b), pad)
                if r >= warmup:
                    runs[name].append(res)
                bar.update()
        for name, rs in runs.items():
            per_token = [sum(x["gaps_s"]) / len(x["gaps_s"]) for x in rs] if new_tokens > 1 else [float("nan")]
            positions = [statistics.median(x["gaps_s"][i] for x in rs) for i in range(new_tokens - 1)]
            records.append({
                "variant": name, "batch_size": b, "use_cache": cache, "prompt_tokens": prompt_tokens,
                "new_tokens": new_tokens, "repeats": repeats, "warmup": warmup,
                "tokens_per_s": _spread([b * new_tokens / x["total_s"] for x in rs]),
                "first_token_ms": _spread([1e3 * x["first_token_s"] for x in rs]),
                "per_token_ms": _spread([1e3 * t for t in per_token]),
                "total_s": _spread([x["total_s"] for x in rs]),
                "gap_ms_by_position": [1e3 * g for g in positions],
            })
    bar.close()
    return records


def table(records: list[dict]):
    """The records as a DataFrame: one row per cell, medians with the min-max spread of tokens/s."""
    import pandas as pd

    return pd.DataFrame([{
        "variant": r["variant"], "batch": r["batch_size"], "KV cache": "on" if r["use_cache"] else "off",
        "tokens/s": r["tokens_per_s"]["median"],
        "tokens/s min-max": f"{r['tokens_per_s']['min']:.1f}-{r['tokens_per_s']['max']:.1f}",
        "first token ms": r["first_token_ms"]["median"], "per token ms": r["per_token_ms"]["median"],
    } for r in records])


def speedups(records: list[dict], baseline: str = "unmerged") -> list[dict]:
    """tokens/s of every variant divided by the baseline's, per batch size and cache setting (medians)."""
    base = {(r["batch_size"], r["use_cache"]): r["tokens_per_s"]["median"] for r in records if r["variant"] == baseline}
    if not base:
        raise InferenceError(f"baseline={baseline!r}: no such variant in the records.")
    return [{"variant": r["variant"], "batch_size": r["batch_size"], "use_cache": r["use_cache"],
             f"speed-up vs {baseline}": r["tokens_per_s"]["median"] / base[(r["batch_size"], r["use_cache"])]}
            for r in records if r["variant"] != baseline and (r["batch_size"], r["use_cache"]) in base]


def cache_curve(variant: Variant, tokenizer, new_tokens: int = 64, prompt_tokens: int = 32, batch_size: int = 1,
                repeats: int = 2) -> dict:
    """Gap between consecutive tokens at each position, with and without the KV cache (medians of `repeats`).

    With the cache each step feeds one token and reads the cached keys and
    values; without it each step runs the whole sequence again, so the gap
    grows with the position and the total with the square of the output length.
    """
    ids = prompt_ids(tokenizer, batch_size, prompt_tokens)
    out = {}
    for cache in (True, False):
        timed_generate(variant.model, ids, 2, cache, variant.row_adapters(batch_size), tokenizer.pad_token_id)
        runs = [timed_generate(variant.model, ids, new_tokens, cache, variant.row_adapters(batch_size),
                               tokenizer.pad_token_id) for _ in range(repeats)]
        out["on" if cache else "off"] = {
            "gap_ms": [1e3 * statistics.median(r["gaps_s"][i] for r in runs) for i in range(new_tokens - 1)],
            "first_token_ms": 1e3 * statistics.median(r["first_token_s"] for r in runs),
            "total_s": statistics.median(r["total_s"] for r in runs)}
    return {"variant": variant.name, "batch_size": batch_size, "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens, "repeats": repeats, **out}


# ------------------------------------------------------------ correctness
@torch.no_grad()
def merged_agreement(variants: dict[str, Variant], input_ids: torch.Tensor, new_tokens: int = 8) -> dict:
    """Greedy tokens of the merged model against the unmerged one; and the largest first-step logit gap."""
    if not {"unmerged", "merged"} <= set(variants):
        raise InferenceError(f"variants: need 'unmerged' and 'merged' to compare, got {sorted(variants)}; "
                             "build them with build_variants(model, names).")
    un, me = variants["unmerged"], variants["merged"]
    a = timed_generate(un.model, input_ids, new_tokens)["tokens"]
    b = timed_generate(me.model, input_ids, new_tokens)["tokens"]
    dev = next(un.model.parameters()).device
    la = un.model(input_ids=input_ids.to(dev)).logits[:, -1].float()
    lb = me.model(input_ids=input_ids.to(next(me.model.parameters()).device)).logits[:, -1].float().to(dev)
    return {"rows_equal": (a == b).all(dim=1).tolist(), "token_agreement": float((a == b).float().mean()),
            "max_logit_gap": float((la - lb).abs().max()), "max_logit": float(la.abs().max())}


@torch.no_grad()
def mixed_agreement(model, input_ids: torch.Tensor, names: list[str], new_tokens: int = 8) -> dict:
    """Greedy rows of one mixed batch (row i through names[i]) against each adapter run on the same batch."""
    names = check_adapter_names(model, names)
    if len(names) != input_ids.shape[0]:
        raise InferenceError(f"adapter_names: one name per row, got {len(names)} names for {input_ids.shape[0]} rows.")
    active = model.active_adapter
    mixed = timed_generate(model, input_ids, new_tokens, adapter_names=names)["tokens"]
    alone = torch.empty_like(mixed)
    for name in dict.fromkeys(names):
        if name == "__base__":
            with model.disable_adapter():
                toks = timed_generate(model, input_ids, new_tokens)["tokens"]
        else:
            model.set_adapter(name)
            toks = timed_generate(model, input_ids, new_tokens)["tokens"]
        for i, n in enumerate(names):
            if n == name:
                alone[i] = toks[i]
    model.set_adapter(active)
    return {"rows_equal": (mixed == alone).all(dim=1).tolist(), "mixed": mixed.tolist(), "alone": alone.tolist()}


def _lora_layers(model, adapter: str) -> dict:
    return {name: m for name, m in model.named_modules()
            if hasattr(m, "get_delta_weight") and adapter in getattr(m, "lora_A", {})}


@torch.no_grad()
def merge_roundtrip(model, adapter: str, input_ids: torch.Tensor, rounds: int = 1) -> dict:
    """Merge `adapter` into the base weights and unmerge it `rounds` times; what is left of W0, and its cost.

    Reports per round the largest |W - W0| over all adapted layers (and relative
    to the largest |W0|), the merge and unmerge times, and after the last round
    the largest change of the logits with the adapter active. The base weights
    are restored from a copy at the end, so the served model is unchanged.
    """
    check_adapter_names(model, [adapter])
    if rounds < 1:
        raise InferenceError(f"rounds={rounds}: need at least one merge + unmerge.")
    layers = _lora_layers(model, adapter)
    w0 = {n: m.get_base_layer().weight.detach().clone() for n, m in layers.items()}
    scale = max(float(w.abs().max()) for w in w0.values())
    delta = sum(float(m.get_delta_weight(adapter).float().pow(2).sum()) for m in layers.values()) ** 0.5
    base_norm = sum(float(w.float().pow(2).sum()) for w in w0.values()) ** 0.5
    active = model.active_adapter
    model.set_adapter(adapter)
    dev = next(model.parameters()).device
    before = model(input_ids=input_ids.to(dev)).logits.float()
    out = []
    for k in range(rounds):
        t0 = time.perf_counter()
        model.merge_adapter([adapter])
        t1 = time.perf_counter()
        model.unmerge_adapter()
        t2 = time.perf_counter()
        err = max(float((m.get_base_layer().weight.float() - w0[n].float()).abs().max()) for n, m in layers.items())
        out.append({"round": k + 1, "max_abs_weight_error": err, "relative": err / scale,
                    "merge_s": t1 - t0, "unmerge_s": t2 - t1})
    after = model(input_ids=input_ids.to(dev)).logits.float()
    for n, m in layers.items():
        m.get_base_layer().weight.copy_(w0[n])
    model.set_adapter(active)
    return {"dtype": str(next(iter(w0.values())).dtype).removeprefix("torch."), "layers": len(layers),
            "delta_relative_norm": delta / base_norm, "max_abs_w0": scale, "rounds": out,
            "max_abs_weight_error": out[-1]["max_abs_weight_error"],
            "max_logit_change": float((after - before).abs().max()), "max_abs_logit": float(before.abs().max())}


# ------------------------------------------------------------------ memory
def _resident_bytes() -> int:
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
    if fmt not in FORMATS:
        raise InferenceError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}.")
    dtype = "float32" if fmt == "float32" else "bfloat16"
    config = RunConfig(model_name=model_name, device=device, dtype=dtype, compute_dtype=dtype)
    dev = models.pick_device(device)
    tokenizer = models.load_tokenizer(model_name)
    ids = prompt_ids(tokenizer, batch_size, prompt_tokens)
    before = _resident_bytes() if dev.type == "cpu" else torch.cuda.memory_allocated(dev)
    kwargs = {"dtype": getattr(torch, dtype)}
    if fmt == "nf4":
        kwargs["quantization_config"] = models.quantization_config(with_overrides(config, method="qlora"),
                                                                   getattr(torch, dtype))
        kwargs["device_map"] = {"": dev.index or 0} if dev.type == "cuda" else {"": "cpu"}
    from transformers import AutoModelForCausalLM

    model = models._from_pretrained(AutoModelForCausalLM.from_pretrained, model_name, **kwargs)
    if fmt != "nf4":
        model.to(dev)
    model.eval()
    weights = memory.measured_weights_bytes(model)
    load_peak = memory._rss_peak_bytes() if dev.type == "cpu" else torch.cuda.max_memory_allocated(dev)
    timed_generate(model, ids, 2, pad_token_id=tokenizer.pad_token_id)  # warm-up
    with memory.track_peak_memory(dev) as peak:
        res = timed_generate(model, ids, new_tokens, pad_token_id=tokenizer.pad_token_id)
    return {"format": fmt, "model": model_name, "device": dev.type, "weights_bytes": weights,
            "before_load_bytes": before, "load_peak_bytes": load_peak, "generate_peak_bytes": peak.bytes,
            "process_peak_bytes": max(load_peak, peak.bytes),
            "peak_source": peak.source, "batch_size": batch_size, "new_tokens": new_tokens,
            "tokens_per_s": batch_size * new_tokens / res["total_s"], "torch_threads": torch.get_num_threads(),
            "predicted_weights_bytes": memory.weights_bytes(model_name, "nf4" if fmt == "nf4" else fmt)}


def bitsandbytes_runs(device: str = "cpu") -> tuple[bool, str]:
    """(True, '') if bitsandbytes can quantize here; otherwise (False, why)."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return False, "bitsandbytes is not installed (pip install bitsandbytes)"
    try:
        import bitsandbytes.functional as bnbf

        w = torch.randn(64, 64, device=models.pick_device(device))
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
        proc = subprocess.run([sys.executable, "-m", "peftlab.inference", args], capture_output=True, text=True,
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
    cfg = models.model_config(model_name)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * dtype_bytes * batch_size * tokens


def gpu_prediction(model_names=("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-3B-Instruct", "Qwen/Qwen2.5-7B-Instruct"),
                   batch_size: int = 16, tokens: int = 512) -> list[dict]:
    """PREDICTED GPU memory for serving (no GPU used): weights in bf16 and NF4 (peftlab.memory.weights_bytes)
    and a bf16 KV cache for `batch_size` sequences of `tokens` tokens. The CUDA context and
    activations come on top."""
    rows = []
    for name in model_names:
        kv = kv_cache_bytes(name, batch_size, tokens)
        rows.append({"model": name, "bf16_weights_bytes": memory.weights_bytes(name, "bfloat16"),
                     "nf4_weights_bytes": memory.weights_bytes(name, "nf4"), "kv_cache_bytes": kv,
                     "batch_size": batch_size, "tokens": tokens, "kind": "prediction (peftlab.memory estimator)"})
    return rows


# ------------------------------------------------------------------ plots
def plot_throughput(records: list[dict], path: str | Path | None = None):
    """tokens/s against batch size, one line per variant, one panel per KV cache setting (min-max as bars)."""
    from .plots import _pyplot, _save

    plt = _pyplot()
    settings = [c for c in (True, False) if any(r["use_cache"] == c for r in records)]
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 3.6), squeeze=False)
    for ax, cache in zip(axes[0], settings):
        for name in dict.fromkeys(r["variant"] for r in records):
            rows = sorted((r for r in records if r["variant"] == name and r["use_cache"] == cache),
                          key=lambda r: r["batch_size"])
            med = [r["tokens_per_s"]["median"] for r in rows]
            err = [[m - r["tokens_per_s"]["min"] for m, r in zip(med, rows)],
                   [r["tokens_per_s"]["max"] - m for m, r in zip(med, rows)]]
            ax.errorbar([r["batch_size"] for r in rows], med, yerr=err, marker="o", capsize=3, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("generated tokens/s")
        ax.set_title(f"KV cache {'on' if cache else 'off'}")
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_cache_curve(curve: dict, path: str | Path | None = None):
    """Milliseconds between consecutive tokens against the token's position, KV cache on and off."""
    from .plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for key in ("on", "off"):
        gaps = curve[key]["gap_ms"]
        ax.plot(range(2, len(gaps) + 2), gaps, marker=".", label=f"KV cache {key}")
    ax.set_xlabel("position of the generated token")
    ax.set_ylabel("ms since the previous token")
    ax.set_title(f"{curve['variant']}, batch {curve['batch_size']}, prompt {curve['prompt_tokens']} tokens")
    ax.legend()
    return _save(fig, path)


def main(argv=None) -> int:
    """`python -m peftlab.inference '<json>'`: one `format_run` in this process, its record as JSON on stdout."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    args = json.loads((argv or sys.argv[1:])[0])
    print(json.dumps(format_run(**args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
