"""Base models and tokenizers: by hub name, local path, or the offline tiny model.

Loading goes through `AutoModelForCausalLM.from_pretrained` for every source,
so the tiny model exercises the same code path as Qwen2.5-3B on Colab.
Quantization uses the transformers 5 API (`quantization_config=`); the old
`load_in_4bit=` keyword is gone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .config import RunConfig
from .smollm import INSTALL_ALL as SMOLLM_INSTALL
from .smollm import SMOLLM_NAME, SmolLMUnavailableError, ensure_smollm
from .tiny import TINY_NAME, ensure_tiny_model

log = logging.getLogger(__name__)


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


# ---------------------------------------------------------------- device/dtype
def pick_device(requested: str = "auto") -> torch.device:
    if requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device={requested!r} but CUDA is not available; use device='auto' or 'cpu'.")
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def bf16_native(device: torch.device | int | None = None) -> bool:
    """True on Ampere and newer (compute capability 8.0+).

    Not `torch.cuda.is_bf16_supported()`: by default it counts emulation and
    answers True on a T4 (compute capability 7.5), where bf16 runs emulated.
    """
    return torch.cuda.get_device_capability(device)[0] >= 8


def gpu_dtype(bf16: bool) -> torch.dtype:
    """The weight dtype on a CUDA GPU: bf16 where the hardware has it, else float32, never float16.

    Qwen2/2.5's activations exceed float16's range (65504) and turn into inf,
    then NaN or "!!!!" output (QwenLM/Qwen3 issues #761, #868). A GPU without
    bf16 (T4, V100) therefore trains in float32; a 3B model fits a T4 as QLoRA,
    whose 4-bit base then computes in float32 too (compute_dtype 'auto').
    """
    return torch.bfloat16 if bf16 else torch.float32


# oneDNN's ISA names that include bfloat16 dot products; ONEDNN_MAX_CPU_ISA (or its older
# spelling DNNL_MAX_CPU_ISA) set to any other name caps torch's bf16 matrix products below
# them (oneDNN's documentation, "CPU dispatcher control").
_ONEDNN_BF16_ISAS = {
    "ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
    "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16",
}


# Environment that holds torch, oneDNN and MKL to AVX2 on any x86 CPU: what a laptop without
# AVX-512 runs, emulated bfloat16 included (on an AMX Xeon a 576x576 @ 576x1536 bf16 product went
# from 0.9 ms to 459 ms under it). bench/ uses it to measure the course as such a CPU runs it.
AVX2_ONLY_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def cpu_features() -> dict:
    """This CPU's feature flags: torch's own probes (`torch.cpu._is_avx512_bf16_supported`,
    `_is_amx_tile_supported`), `torch.cpu.get_capabilities()` where torch has it (2.12+), else
    /proc/cpuinfo's flags (Linux; Arm's BF16 extension appears there as `bf16`)."""
    import platform

    feats: dict = {"architecture": platform.machine().lower()}
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        try:
            feats.update(get())
        except Exception:  # cpuinfo could not read this CPU: the probes and flags below still can
            pass
    else:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    feats |= {name: name in flags for name in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")}
                    break
        except OSError:
            pass
    # torch's probes, which its own kernels consult, have the last word where they exist.
    for key, probe in (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx_bf16", "_is_amx_tile_supported")):
        if hasattr(torch.cpu, probe):
            feats[key] = bool(getattr(torch.cpu, probe)())  # AMX tiles come with AMX-BF16 on every CPU so far
    return feats


def cpu_bf16_native(features: dict | None = None, capability: str | None = None,
                    env: dict | None = None, system: str | None = None) -> bool:
    """True where this CPU computes bfloat16 matrix products in hardware, False where torch emulates them.

    x86: AVX512-BF16 or AMX-BF16, with torch dispatching AVX-512 kernels
    (`torch.backends.cpu.get_cpu_capability()`) and oneDNN not capped below them. Arm on Linux: the
    BF16 extension. Everything else (AVX2-only CPUs: Intel's consumer chips since the 12th generation
    have no AVX-512, AMD's before Zen 4 none; Apple's CPUs, where torch has no bf16 matrix kernel)
    emulates bfloat16: a 576x576 @ 576x1536 product took 4.3 s in bf16 against 52-83 ms in float32 on
    an AVX2 EPYC (torch 2.13). The arguments stand in for this machine in tests.
    """
    import platform

    feats = cpu_features() if features is None else features
    env = os.environ if env is None else env
    system = platform.system() if system is None else system
    arch = str(feats.get("architecture", platform.machine())).lower()
    if arch in ("x86_64", "amd64", "x86", "i686"):
        capability = torch.backends.cpu.get_cpu_capability() if capability is None else capability
        cap = (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
        return (
            capability.upper().startswith("AVX512")
            and bool(feats.get("avx512_bf16") or feats.get("amx_bf16"))
            and cap in _ONEDNN_BF16_ISAS
        )
    if arch in ("aarch64", "arm64"):
        return system == "Linux" and bool(feats.get("bf16") or feats.get("sve_bf16"))
    return False


def cpu_kind() -> str:
    """One line naming what this CPU computes natively, for records and messages:
    e.g. 'AVX512 with AVX512-BF16, AMX-BF16' or 'AVX2, no native bfloat16'."""
    feats = cpu_features()
    arch = str(feats.get("architecture", "")).lower()
    if arch in ("aarch64", "arm64"):
        base = "Arm"
        extras = [name for key, name in (("bf16", "BF16"), ("sve_bf16", "SVE-BF16")) if feats.get(key)]
    else:
        base = torch.backends.cpu.get_cpu_capability()
        extras = [name for key, name in (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16")) if feats.get(key)]
    native = cpu_bf16_native(feats)
    if native:
        return f"{base} with {', '.join(extras)}"
    return f"{base}, no native bfloat16" + (f" ({', '.join(extras)} present but not used)" if extras else "")


def mps_bf16() -> bool:
    """bfloat16 on Apple's GPU needs macOS 14 (Sonoma) or newer."""
    mps = getattr(torch.backends, "mps", None)
    check = getattr(mps, "is_macos_or_newer", None)
    return bool(check and check(14, 0))


def resolve_dtype(requested: str, device_type: str, bf16_supported: bool | None = None) -> str:
    """The course's one 'auto' dtype rule, as a name: bfloat16 wherever the hardware computes it
    natively, float32 everywhere else, never float16.

    - CUDA: bf16 on Ampere and newer, float32 on older GPUs (see gpu_dtype).
    - CPU: bf16 only with AVX512-BF16/AMX (x86) or BF16 (Arm), see `cpu_bf16_native`; on an
      AVX2-only CPU emulated bf16 is 50-80x slower than float32.
    - MPS: bf16 from macOS 14, else float32. float16 would be faster, but Qwen2.5's activations
      overflow it (see gpu_dtype).

    `bf16_supported=None` asks the local hardware; the memory estimator passes True or False to
    predict for hardware it does not have.
    """
    if requested != "auto":
        return requested
    if bf16_supported is None:
        if device_type == "cuda":
            bf16_supported = torch.cuda.is_available() and bf16_native()
        elif device_type == "mps":
            bf16_supported = mps_bf16()
        elif device_type == "cpu":
            bf16_supported = cpu_bf16_native()
        else:
            bf16_supported = False
    return "bfloat16" if bf16_supported else "float32"


def bf16_cost(size: int = 256, repeats: int = 3) -> float:
    """How many times slower a bfloat16 matrix product is than a float32 one here, measured now
    (a size x size product, best of `repeats`; about 20 ms where bf16 is emulated)."""
    import time

    def best(dtype):
        a = torch.randn(size, size).to(dtype)
        a @ a  # warm-up: kernel selection and allocation
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ a
            times.append(time.perf_counter() - start)
        return min(times)

    return best(torch.bfloat16) / max(best(torch.float32), 1e-9)


def warn_if_slow_dtype(dtype: str, device_type: str, log_line=None) -> str | None:
    """One line when a run asks for bfloat16 on a CPU that emulates it: how much slower, measured
    now, and how to switch. Returns the line (None when there is nothing to say)."""
    if device_type != "cpu" or dtype != "bfloat16" or cpu_bf16_native():
        return None
    line = (
        f"dtype='bfloat16' on this CPU ({cpu_kind()}): torch emulates bfloat16 here, and a matrix "
        f"product runs {bf16_cost():.0f}x slower than in float32 (measured just now). "
        "Set dtype='auto' (or 'float32') to train at full speed."
    )
    (log_line or log.warning)(line)
    return line


def run_dtypes(config: RunConfig, device_type: str, bf16_supported: bool | None = None) -> tuple[str, str]:
    """(weight dtype, 4-bit compute dtype) of `config` on `device_type`; compute 'auto' follows the weights."""
    weights = resolve_dtype(config.dtype, device_type, bf16_supported)
    return weights, weights if config.compute_dtype == "auto" else config.compute_dtype


def pick_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """`resolve_dtype` as a torch dtype for a real device."""
    bf16 = bf16_native(device) if device.type == "cuda" and requested == "auto" else None
    return getattr(torch, resolve_dtype(requested, device.type, bf16))


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
