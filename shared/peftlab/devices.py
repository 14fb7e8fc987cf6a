"""Which device and dtype a run gets, and why: the course's one 'auto' rule.

bfloat16 wherever the hardware computes it natively, float32 everywhere else,
never float16 (Qwen2/2.5 overflows it). On a CUDA GPU that is a question of
compute capability; on a CPU of its instruction set (AVX512-BF16, AMX or Arm's
BF16), which is why this module reads the CPU's features: an AVX2-only CPU
emulates bfloat16 20-40x slower than float32 (bench/records/cpu_speed_*), and a record or message that
names a time names the CPU kind beside it (`cpu_kind`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .config import RunConfig

log = logging.getLogger(__name__)


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
      AVX2-only CPU emulated bf16 is 20-40x slower than float32.
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
