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
measures what is left.

Neighbours this module uses and re-exports under their old names: timed
generation (`generation`), memory per weight format and the GPU prediction
(`measure.memory_by_format`, `memory.gpu_prediction`), the plots (`plots`).
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass

import torch

from . import adapters, models
from .config import RunConfig, with_overrides

# Moved out, still reachable as inference.<name> (Session 5, bench/inference.py): generation, memory per
# weight format, the serving plots.
from .generation import InferenceError, TokenClock, check_batch_sizes, prompt_ids, timed_generate  # noqa: F401
from .measure import FORMATS, bitsandbytes_runs, format_run, memory_by_format  # noqa: F401
from .memory import gpu_prediction, kv_cache_bytes  # noqa: F401
from .plots import plot_cache_curve, plot_throughput  # noqa: F401

VARIANTS = ("unmerged", "merged", "mixed")


# ------------------------------------------------------------------ inputs
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
    """Greedy rows of one mixed batch (row i through names[i]) against each adapter run on the same batch;
    and the largest first-step logit gap between the two, which judges them where rounding flips a near-tie."""
    names = check_adapter_names(model, names)
    if len(names) != input_ids.shape[0]:
        raise InferenceError(f"adapter_names: one name per row, got {len(names)} names for {input_ids.shape[0]} rows.")
    active = model.active_adapter
    ids = input_ids.to(next(model.parameters()).device)
    mixed = timed_generate(model, input_ids, new_tokens, adapter_names=names)["tokens"]
    mixed_logits = model(input_ids=ids, adapter_names=names).logits[:, -1].float()
    alone, alone_logits = torch.empty_like(mixed), torch.empty_like(mixed_logits)
    for name in dict.fromkeys(names):
        if name == "__base__":
            with model.disable_adapter():
                toks = timed_generate(model, input_ids, new_tokens)["tokens"]
                logits = model(input_ids=ids).logits[:, -1].float()
        else:
            model.set_adapter(name)
            toks = timed_generate(model, input_ids, new_tokens)["tokens"]
            logits = model(input_ids=ids).logits[:, -1].float()
        for i, n in enumerate(names):
            if n == name:
                alone[i], alone_logits[i] = toks[i], logits[i]
    model.set_adapter(active)
    return {"rows_equal": (mixed == alone).all(dim=1).tolist(), "mixed": mixed.tolist(), "alone": alone.tolist(),
            "max_logit_gap": float((mixed_logits - alone_logits).abs().max()),
            "max_logit": float(alone_logits.abs().max())}


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
