"""Base models and tokenizers: by hub name, local path, or the offline tiny model.

Loading goes through `AutoModelForCausalLM.from_pretrained` for every source,
so the tiny model exercises the same code path as Qwen2.5-3B on Colab.
Quantization uses the transformers 5 API (`quantization_config=`); the old
`load_in_4bit=` keyword is gone. Which device and dtype a model gets is decided
in `peftlab.devices`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .config import RunConfig
from .devices import pick_device, pick_dtype, run_dtypes, warn_if_slow_dtype  # noqa: F401  (notebooks: models.pick_dtype)
from .smollm import INSTALL_ALL as SMOLLM_INSTALL
from .smollm import SMOLLM_NAME, SmolLMUnavailableError, ensure_smollm
from .tiny import TINY_NAME, ensure_tiny_model


class ModelNotAvailableError(OSError):
    """The model could not be found locally and the hub could not supply it."""


# Published Qwen2.5 configs (huggingface.co/Qwen/<name>/blob/main/config.json),
# kept here so parameter counts and memory estimates work with no network and
# no download: the model is built on the meta device from these numbers.
QWEN25_SHAPES = {
    "0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "3B": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "14B": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40,
                num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
    "32B": dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
                num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
    "72B": dict(hidden_size=8192, intermediate_size=29568, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
}
# Licences differ by size: recommend accordingly (Qwen2.5 model cards).
QWEN25_LICENSE = {size: "Apache-2.0" for size in QWEN25_SHAPES} | {
    "3B": "Qwen Research License (non-commercial)",
    "72B": "Qwen License (commercial use above 100M monthly users needs a licence)",
}


def _qwen25_size(name: str) -> str | None:
    """'Qwen/Qwen2.5-3B-Instruct' -> '3B'; None if the name is not a Qwen2.5 text model."""
    base = name.split("/")[-1]
    if not base.lower().startswith("qwen2.5-"):
        return None
    size = base.split("-")[1].upper()
    return size if size in QWEN25_SHAPES else None


def resolve_model_path(name: str) -> str:
    """The cache directory of a course model (tiny-qwen2, smollm2-135m), a local directory, or the hub name."""
    if name == TINY_NAME:
        return str(ensure_tiny_model())
    if name == SMOLLM_NAME:
        try:
            return str(ensure_smollm())
        except SmolLMUnavailableError as exc:
            raise ModelNotAvailableError(str(exc)) from None
    return name


def model_config(name: str):
    """A transformers config for `name` without downloading weights.

    Known Qwen2.5 sizes come from the table above, so this works offline.
    """
    from transformers import AutoConfig, Qwen2Config

    size = _qwen25_size(name)
    if size is not None and not Path(name).is_dir():
        return Qwen2Config(
            **QWEN25_SHAPES[size],
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        )
    return _from_pretrained(AutoConfig.from_pretrained, name)


def meta_model(name_or_config):
    """The model's modules on the meta device: shapes and counts, zero bytes."""
    from transformers import AutoModelForCausalLM

    config = model_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


_LAYER_SHAPES: dict[str, dict[str, tuple[int, int]]] = {}


def layer_shapes_on_meta(name_or_config) -> dict[str, tuple[int, int]]:
    """{linear layer name: (out_features, in_features)} of the model's first decoder layer, read from the
    model built on the meta device (no weights), once per configuration. Exercise 07's tests and probes
    let it stand in for the student's `linear_shapes` while they judge the other counts."""
    config = model_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    key = config.to_json_string()
    if key not in _LAYER_SHAPES:
        layer = meta_model(config).model.layers[0]
        _LAYER_SHAPES[key] = {n.rsplit(".", 1)[-1]: (m.out_features, m.in_features)
                              for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
    return dict(_LAYER_SHAPES[key])


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _from_pretrained(loader, name: str, **kwargs):
    """Call a `from_pretrained`, turning 'not found / no network' into one clear error."""
    path = resolve_model_path(name)  # raises ModelNotAvailableError for a course model it cannot build
    try:
        return loader(path, **kwargs)
    except (OSError, ValueError) as exc:
        text = str(exc)
        looks_missing = (
            isinstance(exc, OSError)
            or "does not appear to have" in text
            or "couldn't connect" in text.lower()
            or "offline" in text.lower()
        )
        if not looks_missing:
            raise
        where = "HF_HUB_OFFLINE=1 is set" if _offline() else "the hub could not be reached or has no such repo"
        raise ModelNotAvailableError(
            f"cannot load {name!r}: it is not a local directory and {where}. "
            f"Use a local path to a downloaded checkpoint, run where huggingface.co is reachable, "
            f"or use model_name='{SMOLLM_NAME}' (SmolLM2-135M-Instruct, offline after `{SMOLLM_INSTALL}`) "
            f"or '{TINY_NAME}' (the offline tiny model)."
        ) from None


# ------------------------------------------------------------ training's logits
def logits_positions(labels: torch.Tensor) -> torch.Tensor:
    """Sequence positions whose next token some row of the batch is trained on: (K,) indices into T.

    Position t predicts token t + 1 (labels (B, T), -100 where there is no loss: prompt, padding).
    On the case study's pairs the labelled response is about a fifth of each row."""
    needed = (labels[:, 1:] != -100).any(0)  # (T - 1,)
    return needed.nonzero().squeeze(1)


def response_logits_supported(model) -> bool:
    """Whether the course trainer may compute a causal LM's loss from fewer logits (see CourseTrainer)."""
    import inspect

    base = model
    if hasattr(model, "peft_config"):
        peft_config = model.active_peft_config
        # Prompt methods shift positions by their virtual tokens; AdaLoRA adds its orthogonality
        # penalty to the loss its forward returns. Both keep transformers' own loss.
        if peft_config.is_prompt_learning or str(peft_config.peft_type).endswith("ADALORA"):
            return False
        base = model.get_base_model()
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def quantization_config(config: RunConfig, compute_dtype: torch.dtype):
    """BitsAndBytesConfig for config.quantization ('4bit' or '8bit'), else None."""
    if config.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if config.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config.quant_type,
        bnb_4bit_use_double_quant=config.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )


# --------------------------------------------------------------------- loading
def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, name)
    if tokenizer.pad_token is None:
        # Some bases ship without a pad token; reuse EOS (masked out of the loss anyway).
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(config: RunConfig):
    """The base model for `config`, on the chosen device and dtype, quantized if asked.

    For k-bit training it also runs `prepare_model_for_kbit_training`, which
    casts norms to fp32 and (by default) enables gradient checkpointing; we
    pass the config's own gradient_checkpointing choice instead.
    """
    from transformers import AutoModelForCausalLM

    device = pick_device(config.device)
    dtype, compute = (getattr(torch, name) for name in run_dtypes(config, device.type))
    quant = quantization_config(config, compute)
    kwargs = {"dtype": dtype}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": device.type}
    warn_if_slow_dtype(str(dtype).removeprefix("torch."), device.type)
    model = _from_pretrained(AutoModelForCausalLM.from_pretrained, config.model_name, **kwargs)
    if quant is None:
        model.to(device)
    else:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing
        )
        if device.type == "cpu":
            keep_4bit_trainable_on_cpu(model)
    return model


def keep_4bit_trainable_on_cpu(model) -> int:
    """Stop bitsandbytes repacking this model's 4-bit weights for CPU inference; returns the layers changed.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 rewrites a Linear4bit's weight
    into an inference-only layout at its first forward pass without gradients
    (an evaluation before training, say). Training afterwards stops with "a view
    of a leaf Variable that requires grad is being used in an in-place operation",
    and dequantizing the repacked weight gives wrong values. A model the course
    loads to train or merge keeps the training layout; inference is slower.
    """
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def load(config: RunConfig):
    """(model, tokenizer) for a run config."""
    tokenizer = load_tokenizer(config.model_name)
    model = load_model(config)
    return model, tokenizer
