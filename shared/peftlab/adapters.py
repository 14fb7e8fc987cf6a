"""PEFT configs from a RunConfig, attaching, counting, saving, merging, combining.

Everything here uses `peft`; the from-scratch LoRA layer students write lives
in the exercises, and a test proves it matches peft on the same weights.

LoRA (Hu et al. 2021, section 4.1): a frozen weight W (d_out, d_in) gains
a trainable update (alpha / r) * B @ A with A (r, d_in) random and B (d_out, r)
zero, so the adapted model starts out identical to the base.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .config import LORA_FAMILY, ConfigError, RunConfig


class AdapterError(ValueError):
    """An adapter operation that cannot work; the message says why and what to do."""


def peft_config(config: RunConfig, total_step: int | None = None):
    """The peft config object for `config.method` (None for full fine-tuning).

    AdaLoRA needs the total number of optimizer steps to schedule its rank
    budget; `train.py` derives it from the data set size and passes it here.
    """
    from peft import (
        AdaLoraConfig,
        IA3Config,
        LoraConfig,
        PrefixTuningConfig,
        PromptTuningConfig,
        TaskType,
    )

    m = config.method
    if m == "full":
        return None
    if m in ("lora", "qlora", "dora"):
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=config.r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.target_modules,
            use_rslora=config.use_rslora,
            use_dora=(m == "dora"),
            rank_pattern=dict(config.rank_pattern),
            alpha_pattern=dict(config.alpha_pattern),
            bias="none",
        )
    if m == "adalora":
        if not total_step or total_step <= config.adalora_tinit + config.adalora_tfinal:
            raise AdapterError(
                f"AdaLoRA needs total_step > tinit + tfinal (got total_step={total_step}); "
                "train.py derives it from the data set, epochs and batch size."
            )
        return AdaLoraConfig(
            task_type=TaskType.CAUSAL_LM,
            init_r=config.adalora_init_r,
            target_r=config.r,
            tinit=config.adalora_tinit,
            tfinal=config.adalora_tfinal,
            deltaT=config.adalora_delta_t,
            total_step=total_step,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.target_modules,
        )
    if m == "prefix":
        # Prefix-Tuning (Li & Liang 2021, section 4.3) reparameterizes the prefix through an MLP.
        return PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=config.num_virtual_tokens, prefix_projection=True
        )
    if m == "ptuning_v2":
        # P-Tuning v2 (Liu et al. 2022) is deep prompt tuning: per-layer prefixes, no reparameterization.
        return PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=config.num_virtual_tokens, prefix_projection=False
        )
    if m == "prompt":
        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=config.num_virtual_tokens)
    if m == "ia3":
        # peft's defaults for Qwen2 (peft.utils.constants): scale the outputs of q_proj and v_proj and the
        # input of down_proj (exercise 07 counts them: 479,232 parameters on Qwen2.5-3B).
        return IA3Config(task_type=TaskType.CAUSAL_LM)
    raise AdapterError(f"no peft config for method {m!r}")


def check_target_modules(model, config: RunConfig) -> None:
    """Every name in target_modules must name linear layers of `model`, matched as peft matches.

    peft takes a name as a module's full name or the part after a dot
    ('q_proj' matches 'model.layers.0.self_attn.q_proj'). Checked here, before
    peft fails with NoMatchingPeftModuleError, so the error lists the names that exist.
    """
    if config.method not in LORA_FAMILY or config.target_modules == "all-linear":
        return
    modules = dict(model.named_modules())
    linear = sorted({name.rsplit(".", 1)[-1] for name, m in modules.items() if isinstance(m, torch.nn.Linear)})
    for target in config.target_modules:
        hits = [m for name, m in modules.items() if name == target or name.endswith("." + target)]
        if not hits:
            why = f"no module of {type(model).__name__} is named {target!r}"
        elif not all(isinstance(m, torch.nn.Linear) for m in hits):
            kinds = sorted({type(m).__name__ for m in hits if not isinstance(m, torch.nn.Linear)})
            why = f"{target!r} names {', '.join(kinds)}, not a linear layer"
        else:
            continue
        raise ConfigError(
            f"RunConfig.target_modules={config.target_modules!r}: {why}; this model's linear layers are "
            f"{', '.join(linear)} (or use 'all-linear').",
            field="target_modules",
        )


def attach(model, config: RunConfig, total_step: int | None = None):
    """Wrap `model` for `config.method`; for 'full', make every weight trainable."""
    from peft import get_peft_model

    check_target_modules(model, config)
    pcfg = peft_config(config, total_step)
    if pcfg is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if config.gradient_checkpointing and config.method in LORA_FAMILY + ("ia3",):
        # Frozen embeddings produce no grad, so checkpointed blocks would see inputs
        # that do not require grad and skip the backward pass through them.
        model.enable_input_require_grads()
    # peft seeds new adapter weights from torch's global RNG: seed for reproducible runs.
    torch.manual_seed(config.seed)
    return get_peft_model(model, pcfg)


@dataclass(frozen=True)
class ParamCounts:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"trainable {self.trainable:,} / total {self.total:,} ({self.percent:.4f}%)"


def count_parameters(model) -> ParamCounts:
    """Trainable and total parameters, right for 4-bit models too.

    bitsandbytes packs two 4-bit values per stored byte, so a naive
    `sum(p.numel())` halves the frozen weights; peft and transformers both
    correct for it, and we use theirs.
    """
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        total = model.num_parameters()
        trainable = model.num_parameters(only_trainable=True)
    return ParamCounts(int(trainable), int(total))


def lora_counts_on_meta(model_name: str, config: RunConfig) -> ParamCounts:
    """Parameter counts of `config` on `model_name` built on the meta device (no download)."""
    from peft import get_peft_model

    from .models import meta_model

    base = meta_model(model_name)
    check_target_modules(base, config)
    pcfg = peft_config(config, total_step=max(1000, config.adalora_tinit + config.adalora_tfinal + 1))
    if pcfg is None:
        return count_parameters(base)
    with torch.device("meta"):
        wrapped = get_peft_model(base, pcfg)
    return count_parameters(wrapped)


def efficiency_table(model_name: str, ranks=(4, 8, 16, 32), target_sets=None) -> list[dict]:
    """Trainable parameters of LoRA against full fine-tuning, computed on the meta device."""
    from .models import meta_model

    target_sets = target_sets or {"q,v": ["q_proj", "v_proj"], "q,v,o": ["q_proj", "v_proj", "o_proj"],
                                  "all linear": "all-linear"}
    total = meta_model(model_name).num_parameters()
    rows = [{"method": "full fine-tuning", "targets": "all", "r": None, "trainable": total, "percent": 100.0}]
    for name, targets in target_sets.items():
        for r in ranks:
            c = lora_counts_on_meta(model_name, RunConfig(r=r, target_modules=targets))
            rows.append({"method": "LoRA", "targets": name, "r": r, "trainable": c.trainable, "percent": c.percent})
    return rows


def adapter_modules(model, adapter_name: str = "default") -> dict[str, int]:
    """{module name: rank} for every LoRA-family module holding `adapter_name`."""
    out = {}
    for name, module in model.named_modules():
        ranks = getattr(module, "r", None)
        if isinstance(ranks, dict) and adapter_name in ranks and hasattr(module, "lora_A"):
            out[name] = int(ranks[adapter_name])
    return out


# ------------------------------------------------------------- save and load
def save_adapter(model, path: str | Path) -> Path:
    """Write only the adapter weights and its config (safetensors)."""
    path = Path(path)
    if not hasattr(model, "peft_config"):
        raise AdapterError("save_adapter needs a peft model; for full fine-tuning use model.save_pretrained.")
    model.save_pretrained(path)
    return path


def load_adapter(base_model, path: str | Path, adapter_name: str = "default", trainable: bool = False):
    """Put a saved adapter on `base_model` (a plain model or a PeftModel that holds others)."""
    from peft import PeftModel

    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise AdapterError(f"{path}: no adapter_config.json here; point at a directory written by save_adapter.")
    if hasattr(base_model, "peft_config"):
        base_model.load_adapter(str(path), adapter_name=adapter_name, is_trainable=trainable)
        return base_model
    return PeftModel.from_pretrained(base_model, str(path), adapter_name=adapter_name, is_trainable=trainable)


def dir_size(path: str | Path) -> int:
    """Bytes on disk under a directory."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# -------------------------------------------------------------------- merging
def merge(model):
    """Fold the LoRA update into the base weights: W <- W + (alpha / r) * B @ A."""
    if not hasattr(model, "merge_and_unload"):
        raise AdapterError("merge needs a peft model with a LoRA-family adapter.")
    return model.merge_and_unload()


def merge_qlora(config: RunConfig, adapter_dir: str | Path, dtype: torch.dtype | None = None):
    """The right merge for a QLoRA adapter: into the *dequantized* base, in 16 (or 32) bits.

    The adapter was trained against dequantize(W_nf4), not against the original
    W. Merging into the dequantized base reproduces the trained model (up to
    float rounding). Merging into the 4-bit weights re-quantizes W + BA and
    rounds part of the update away; merging into the original 16-bit W adds
    the quantization error W - dequantize(W_nf4) that the adapter never saw.
    Exercise 4 measures all three.
    """
    from .config import with_overrides
    from .devices import pick_device, run_dtypes
    from .models import load_model

    device = pick_device(config.device)
    if dtype is None:
        dtype = getattr(torch, run_dtypes(config, device.type)[1])
    quantized = load_model(with_overrides(config, method="qlora", compute_dtype=str(dtype).removeprefix("torch.")))
    base = quantized.dequantize()  # transformers: every Linear4bit back to nn.Linear in the compute dtype
    return merge(load_adapter(base, adapter_dir)).to(dtype)


def combine(model, adapters: list[str], weights: list[float], name: str, combination_type: str = "linear",
            **kwargs):
    """Weighted combination of loaded LoRA adapters into a new one (peft add_weighted_adapter).

    'linear' (and 'ties', 'dare_linear', ... which also combine A and B factor by
    factor) needs equal ranks; 'cat' concatenates (rank = sum); 'svd' recomputes
    a low-rank factorization and needs fp32 weights. `kwargs` go to peft
    (`density=` for ties and dare, `svd_rank=`). Session 3 measures how exact each is.
    """
    if len(adapters) != len(weights) or not adapters:
        raise AdapterError(f"give one weight per adapter: {len(adapters)} adapters, {len(weights)} weights.")
    missing = [a for a in adapters if a not in model.peft_config]
    if missing:
        raise AdapterError(f"adapter(s) {missing} not loaded; loaded: {sorted(model.peft_config)}.")
    ranks = {a: model.peft_config[a].r for a in adapters}
    factorwise = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
    if combination_type in factorwise and len(set(ranks.values())) > 1:
        raise AdapterError(f"{combination_type!r} combination needs equal ranks, got {ranks}; use 'cat' or 'svd'.")
    if combination_type in factorwise[1:] and kwargs.get("density") is None:
        raise AdapterError(f"{combination_type!r} prunes the adapters: give density= (0..1, the share kept).")
    if combination_type.startswith("svd"):
        bad = {p.dtype for n, p in model.named_parameters() if "lora_" in n and p.dtype != torch.float32}
        if bad:
            raise AdapterError(f"'svd' combination needs float32 adapter weights, found {bad}.")
    model.add_weighted_adapter(adapters, weights, name, combination_type=combination_type, **kwargs)
    model.set_adapter(name)
    return model


def compare_merges(reference, builds: dict, batch: dict, tokenized, tokenizer, region: str = "merge") -> dict:
    """Build each merged model in turn, measure it against `reference`, and free it before the next.

    `builds` maps a name to a function returning a merged model. Each entry of the
    result holds the held-out loss, the largest |logit| difference from `reference`
    on `batch`, how many 4-bit layers remain and whether it is still a peft model;
    a build that raises becomes a `checks.Missing` naming `region`, so the tests
    that use it say what to fix. Only one merged model is alive at a time, which
    is what lets exercise 4 fit a T4 (memory.merge_phase_bytes).
    """
    import gc

    from . import checks, metrics

    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        ref_logits = reference(**inputs).logits.float()
    out: dict = {}
    for name, build in builds.items():
        merged = checks.attempt(build, region=region, name=name)
        if isinstance(merged, checks.Missing):
            out[name] = merged
            continue
        with torch.no_grad():
            logits = merged(**{k: v.to(next(merged.parameters()).device) for k, v in inputs.items()}).logits
        out[name] = {
            "loss": metrics.heldout_loss(merged, tokenized, tokenizer),
            "logit_error": float((logits.float().to(ref_logits.device) - ref_logits).abs().max()),
            "four_bit_layers": sum(type(m).__name__ == "Linear4bit" for m in merged.modules()),
            "peft": hasattr(merged, "peft_config"),
        }
        del merged, logits
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out
