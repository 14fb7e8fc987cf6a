"""One run configuration for every PEFT Lab run.

A variant is a flag, not a fork: LoRA, QLoRA, DoRA, AdaLoRA, prefix tuning,
P-tuning v2, prompt tuning, IA3 and full fine-tuning are values of `method`.
The same dataclass is filled from a notebook's `parameters` cell, from a YAML
file, or from `key=value` overrides on the command line, and it is validated
on construction so that an impossible run fails before any model is loaded.
Turning text (YAML values, `key=value` overrides) into typed fields is
`peftlab.overrides`; `ConfigError` lives there and is importable from here.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .overrides import ConfigError, coerce, key_lines, parse_overrides, raw_overrides, type_name

METHODS = ("full", "lora", "qlora", "dora", "adalora", "prefix", "ptuning_v2", "prompt", "ia3")
# Methods that inject low-rank matrices next to frozen linear layers.
LORA_FAMILY = ("lora", "qlora", "dora", "adalora")
# Methods that prepend trainable virtual tokens instead of touching weights.
PROMPT_FAMILY = ("prefix", "ptuning_v2", "prompt")
DTYPES = ("auto", "float32", "float16", "bfloat16")
QUANTIZATIONS = ("none", "4bit", "8bit")


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING):
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class RunConfig:
    """Everything one fine-tuning run needs. Every field carries help text."""

    # --- model --------------------------------------------------------------
    model_name: str = _help(
        "Hub name (e.g. Qwen/Qwen2.5-3B-Instruct), local directory, or 'tiny-qwen2' "
        "for the offline tiny model the course builds itself.",
        "tiny-qwen2",
    )
    device: str = _help("'auto' (CUDA, then MPS, then CPU), 'cuda', 'mps' or 'cpu'.", "auto")
    dtype: str = _help(
        "Weight dtype: 'auto' picks bfloat16 wherever the hardware computes it natively (Ampere+ GPUs, "
        "CPUs with AVX512-BF16/AMX or Arm BF16, MPS on macOS 14+) and float32 everywhere else, never "
        "float16 (Qwen2.5 overflows it); see devices.resolve_dtype.",
        "auto",
    )
    # --- method -------------------------------------------------------------
    method: str = _help(f"Fine-tuning method, one of {', '.join(METHODS)}.", "lora")
    r: int = _help("LoRA rank (for AdaLoRA: the average target rank after pruning).", 8)
    lora_alpha: float = _help("LoRA scaling numerator: the update is (lora_alpha / r) * B @ A.", 16)
    lora_dropout: float = _help("Dropout on the LoRA branch input, in [0, 1).", 0.05)
    use_rslora: bool = _help(
        "Rank-stabilised LoRA: scale by lora_alpha / sqrt(r) instead of lora_alpha / r.", False
    )
    target_modules: Any = _help(
        "Module name suffixes to adapt (a list such as ['q_proj', 'v_proj']) or 'all-linear'.",
        factory=lambda: ["q_proj", "v_proj"],
    )
    rank_pattern: dict = _help(
        "Per-module ranks: {regex suffix of a module name: rank}, e.g. {'o_proj': 8}.", factory=dict
    )
    alpha_pattern: dict = _help("Per-module alphas, keyed like rank_pattern.", factory=dict)
    adalora_init_r: int = _help("AdaLoRA: rank every module starts with before pruning.", 12)
    adalora_tinit: int = _help("AdaLoRA: warm-up steps before ranks are pruned.", 0)
    adalora_tfinal: int = _help("AdaLoRA: final steps during which ranks stay fixed.", 0)
    adalora_delta_t: int = _help("AdaLoRA: steps between two budget reallocations.", 1)
    num_virtual_tokens: int = _help("Prefix / P-tuning v2 / prompt tuning: virtual tokens.", 16)
    # --- quantization ---------------------------------------------------------
    quantization: str = _help(
        "Load the frozen base in 'none', '4bit' or '8bit' (bitsandbytes). method='qlora' implies '4bit'; "
        "LoRA on a 4-bit base is spelt method='qlora' only.",
        "none",
    )
    quant_type: str = _help("4-bit data type: 'nf4' (QLoRA's NormalFloat) or 'fp4'.", "nf4")
    double_quant: bool = _help(
        "Quantize the quantization constants too (QLoRA section 3): about 0.37 bit/param saved.", True
    )
    compute_dtype: str = _help(
        "dtype the 4-bit layers compute in: 'auto' follows `dtype`, else float32/float16/bfloat16.",
        "auto",
    )
    # --- data ---------------------------------------------------------------
    train_file: str | None = _help(
        "JSONL or CSV with instruction/input/output columns; None uses the course's Shakespeare set.",
        None,
    )
    eval_file: str | None = _help("Held-out JSONL or CSV; None uses the Shakespeare held-out set.", None)
    system_prompt: str | None = _help(
        "System message for every example; None keeps the chat template's default.", None
    )
    max_length: int = _help("Longest tokenized example; longer ones are truncated and counted.", 256)
    max_train_samples: int | None = _help("Use only the first N training examples (smoke runs).", None)
    # --- training -----------------------------------------------------------
    per_device_train_batch_size: int = _help("Examples per device per forward pass.", 4)
    gradient_accumulation_steps: int = _help("Forward passes per optimizer step.", 2)
    learning_rate: float = _help("Peak learning rate of AdamW.", 2e-4)
    num_train_epochs: float = _help("Epochs over the training set (ignored when max_steps > 0).", 5.0)
    max_steps: int = _help("Optimizer steps; > 0 overrides num_train_epochs.", -1)
    lr_scheduler_type: str = _help("transformers scheduler name: linear, cosine, constant, ...", "linear")
    warmup_steps: float = _help("Warm-up steps; a value below 1 is a fraction of all steps.", 0.0)
    weight_decay: float = _help("AdamW weight decay.", 0.0)
    seed: int = _help("Seed for weights of new modules, data order and dropout.", 42)
    gradient_checkpointing: bool = _help(
        "Recompute activations in the backward pass: less memory, about 30% more time.", False
    )
    eval_each_epoch: bool = _help("Evaluate held-out loss at the end of every epoch.", True)
    logging_steps: int = _help("Log loss every N optimizer steps.", 1)
    save_strategy: str = _help(
        "'epoch' keeps a checkpoint at the end of every epoch (so resume works); 'no' keeps none.", "epoch"
    )
    train_sampling_strategy: str = _help(
        "Order of training examples: 'random', 'sequential', or 'group_by_length' (batches of similar "
        "lengths, less padding).",
        "random",
    )
    output_dir: str = _help("Where the adapter, checkpoints, plots and run record go.", "runs/shakespeare")

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Reject impossible combinations with a message that names the field and the fix."""

        def fail(name: str, why: str) -> None:
            raise ConfigError(f"RunConfig.{name}={getattr(self, name)!r}: {why}", field=name)

        self._coerce_fields()

        if self.method not in METHODS:
            fail("method", f"unknown method; choose one of {', '.join(METHODS)}.")
        if self.dtype not in DTYPES:
            fail("dtype", f"choose one of {', '.join(DTYPES)}.")
        if self.compute_dtype not in DTYPES:
            fail("compute_dtype", f"choose one of {', '.join(DTYPES)}.")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            fail("device", "choose 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.")
        if self.quantization not in QUANTIZATIONS:
            fail("quantization", f"choose one of {', '.join(QUANTIZATIONS)}.")
        if self.quant_type not in ("nf4", "fp4"):
            fail("quant_type", "choose 'nf4' or 'fp4'.")
        if self.method == "qlora":
            if self.quantization == "8bit":
                fail("quantization", "QLoRA means a 4-bit base; use method='lora' for an 8-bit base.")
            self.quantization = "4bit"
        if self.method == "lora" and self.quantization == "4bit":
            # One spelling per run, so two records of the same run never disagree.
            fail(
                "quantization",
                "LoRA on a 4-bit base is QLoRA: write method='qlora' (it implies quantization='4bit').",
            )
        if self.method == "full" and self.quantization != "none":
            fail("quantization", "quantized weights cannot be trained directly; use method='qlora'.")
        if self.method in PROMPT_FAMILY and self.quantization != "none":
            fail("quantization", f"{self.method} is taught on an unquantized base; set quantization='none'.")
        if isinstance(self.target_modules, dict):
            fail(
                "target_modules",
                "a dict is not peft's API (peft would match its keys as module names); pass a list of "
                "module names and put per-module ranks in rank_pattern / alpha_pattern.",
            )
        if isinstance(self.target_modules, str):
            if self.target_modules != "all-linear":
                self.target_modules = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        elif isinstance(self.target_modules, (list, tuple)):
            if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
                fail("target_modules", "give non-empty module names such as ['q_proj', 'v_proj'].")
            self.target_modules = list(self.target_modules)
        else:
            fail("target_modules", "give a list of module names or 'all-linear'.")
        for name in ("rank_pattern", "alpha_pattern"):
            pattern = getattr(self, name)
            if not isinstance(pattern, dict) or not all(
                isinstance(v, (int, float)) and v > 0 for v in pattern.values()
            ):
                fail(name, "give a dict {module-name regex: positive number}.")
        if self.r < 1:
            fail("r", "the rank must be a positive integer.")
        if self.lora_alpha <= 0:
            fail("lora_alpha", "alpha must be positive.")
        if not 0 <= self.lora_dropout < 1:
            fail("lora_dropout", "dropout must lie in [0, 1).")
        if self.method == "adalora" and self.adalora_init_r < self.r:
            fail("adalora_init_r", f"AdaLoRA prunes from init_r down to r={self.r}; init_r must be >= r.")
        if self.num_virtual_tokens < 1:
            fail("num_virtual_tokens", "need at least one virtual token.")
        if self.method in ("prefix", "ptuning_v2") and self.gradient_checkpointing:
            fail(
                "gradient_checkpointing",
                "prefix tuning and P-tuning v2 do not work with gradient checkpointing in peft; set it False.",
            )
        if self.max_length < 8:
            fail("max_length", "examples need at least 8 tokens to hold a prompt and a response.")
        if self.per_device_train_batch_size < 1:
            fail("per_device_train_batch_size", "must be at least 1.")
        if self.gradient_accumulation_steps < 1:
            fail("gradient_accumulation_steps", "must be at least 1.")
        if self.learning_rate <= 0:
            fail("learning_rate", "must be positive (2e-4 is the case study's value).")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            fail("num_train_epochs", "set num_train_epochs > 0 or max_steps > 0.")
        if self.warmup_steps < 0:
            fail("warmup_steps", "must be >= 0.")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            fail("max_train_samples", "must be None or at least 1.")
        if self.logging_steps < 1:
            fail("logging_steps", "must be at least 1.")
        if self.save_strategy not in ("epoch", "no"):
            fail("save_strategy", "choose 'epoch' or 'no'.")
        if self.train_sampling_strategy not in ("random", "sequential", "group_by_length"):
            fail("train_sampling_strategy", "choose 'random', 'sequential' or 'group_by_length'.")
        if self.method == "adalora" and self.max_steps > 0:
            if self.adalora_tinit + self.adalora_tfinal >= self.max_steps:
                fail(
                    "adalora_tfinal",
                    f"tinit + tfinal must leave steps for pruning within max_steps={self.max_steps}.",
                )

    def _coerce_fields(self) -> None:
        """Give every field its annotated type, or say which field, which value and what type."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                setattr(self, f.name, coerce(value, hints[f.name]))
            except (TypeError, ValueError, OverflowError):
                example = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                raise ConfigError(
                    f"RunConfig.{f.name}={value!r}: expected {type_name(hints[f.name])} "
                    f"(the default is {example!r}); `peftlab help-config` describes every field.",
                    field=f.name,
                ) from None

    # --------------------------------------------------------------- plumbing
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the resolved config as YAML (loadable with `RunConfig.from_yaml`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path

    def __str__(self) -> str:
        width = max(len(f.name) for f in dataclasses.fields(self))
        lines = [f"  {f.name:<{width}} = {getattr(self, f.name)!r}" for f in dataclasses.fields(self)]
        return "RunConfig(\n" + "\n".join(lines) + "\n)"

    @classmethod
    def help(cls) -> str:
        """One line per field: name, default and what it does."""
        out = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out.append(f"{f.name} (default {default!r}): {f.metadata['help']}")
        return "\n".join(out)

    @classmethod
    def from_dict(
        cls, values: dict[str, Any], source: str | None = None, origins: dict[str, str] | None = None
    ) -> RunConfig:
        """Build and validate; errors start with `source`, or with `origins[field]` (e.g. 'c.yaml, line 4')."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"{source or 'config'}: unknown field(s) {', '.join(unknown)}; `peftlab help-config` lists them."
            )
        try:
            return cls(**values)
        except ConfigError as exc:
            where = (origins or {}).get(exc.field or "", source)
            if where is None:
                raise
            raise ConfigError(f"{where}: {exc}", field=exc.field) from None

    @classmethod
    def from_yaml(cls, path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
        """Load a YAML file (or a preset name; None: the defaults), then apply `key=value` overrides."""
        path_str = str(path) if path is not None else "command line"
        origins: dict[str, str] = {}
        if path is None:
            values = {}
        elif path_str in PRESETS:
            values = dict(PRESETS[path_str])
        else:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"{path}: no such config file; presets are {', '.join(PRESETS)}.")
            text = path.read_text()
            try:
                values = yaml.safe_load(text) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not valid YAML ({exc}).") from None
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: expected a mapping of field: value at the top level.")
            origins = {key: f"{path}, line {line}" for key, line in key_lines(text).items()}
        extra = parse_overrides(overrides or [])
        origins.update({key: f"override {key}={raw}" for key, raw in raw_overrides(overrides or []).items()})
        values.update(extra)
        return cls.from_dict(values, source=path_str, origins=origins)


def with_overrides(config: RunConfig, **changes: Any) -> RunConfig:
    """A copy of `config` with some fields changed, validated again."""
    values = config.to_dict()
    values.update(changes)
    return RunConfig.from_dict(values)


# The case study's recipe (Session 2) lives here and only here: the session
# notebook (`preset_name`), `make demo` and `peftlab train --config` read it;
# docs point here instead of restating it.
PRESETS: dict[str, dict[str, Any]] = {
    "shakespeare-reference": dict(
        model_name="Qwen/Qwen2.5-3B-Instruct",
        method="lora",
        r=4,
        lora_alpha=16,
        lora_dropout=0.05,
        target_modules=["q_proj", "v_proj", "o_proj"],
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=2e-4,
        num_train_epochs=5,
        output_dir="runs/shakespeare-reference",
    ),
}
# The same recipe on the offline tiny model: what `make demo` and CI run. One
# change: a 150k-parameter base moves too little at 2e-4 in 40 steps to show
# anything, so the tiny preset uses 2e-3 (the session notebook runs it on a CPU).
# It pins float32 on every machine: a 64-wide model gains no speed from bfloat16, and the tests
# and sessions that run it check exact invariants (merge equals the unmerged model, cat combination).
PRESETS["shakespeare-tiny"] = dict(
    PRESETS["shakespeare-reference"],
    model_name="tiny-qwen2",
    dtype="float32",
    learning_rate=2e-3,
    output_dir="runs/shakespeare-tiny",
)

# The case study on a CPU with a real pretrained model, SmolLM2-135M-Instruct (see
# peftlab.smollm): what `make demo` and the Session 2 notebook run without a GPU.
# Changes to the reference recipe, chosen by `bench/smollm.py --only-sweep` on the 172 training
# and 82 held-out pairs (its table, with each run's chrF gain over copying the input and the
# 95% CI of that gain, is in the README's Performance section): dtype 'auto' (bfloat16 weights
# on a CPU that computes bf16 natively, float32 on one that would emulate it 20-40x slower;
# the LoRA weights stay float32 either way), r=8 on every linear layer instead of r=4 on q/v/o, lr 2e-3, and no
# LoRA dropout. On a CPU, dropout draws its noise with aten::bernoulli_, about a quarter of
# each training step in torch.profiler; without it the 110 steps of 5 epochs fit the demo's
# 6 minutes on 2 cores that compute bfloat16 natively; float32 held to AVX2 took 372-432 s before the course
# trainer's cheaper forward and 303-381 s after it (README). 5 epochs as in the reference: fewer did not beat
# copying clearly.
PRESETS["shakespeare-cpu"] = dict(
    PRESETS["shakespeare-reference"],
    model_name="smollm2-135m",
    dtype="auto",
    r=8,
    target_modules="all-linear",
    lora_dropout=0.0,
    num_train_epochs=5,
    learning_rate=2e-3,
    eval_each_epoch=False,
    output_dir="runs/shakespeare-cpu",
)


def preset(name: str, **changes: Any) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return RunConfig.from_dict({**PRESETS[name], **changes}, source=f"preset {name}")


def load_saved(path: str | Path) -> RunConfig:
    """Read back a config saved by `RunConfig.save` or embedded in a run record (JSON)."""
    path = Path(path)
    text = path.read_text()
    values = json.loads(text)["config"] if path.suffix == ".json" else yaml.safe_load(text)
    return RunConfig.from_dict(values, source=str(path))
