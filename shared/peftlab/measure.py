"""Memory measured: what `peftlab.memory` predicts, read off a running process.

- `track_peak_memory`: the peak of a block (a training run): CUDA's
  `max_memory_allocated`, or the process's resident high-water mark (VmHWM,
  reset at entry on Linux; psutil sampling elsewhere).
- `measure_training_step`: the tensors alive at the peak of one forward and
  backward pass, on a GPU (`max_memory_allocated`) and on a CPU alike (the
  profiler's allocation events); compare with
  `memory.estimate(..., runtime_bytes=0)`.
- `memory_by_format` (Session 5): one `format_run` per weight format
  (float32, bfloat16, NF4), each in a fresh process (`python -m
  peftlab.measure`), so one format's memory never counts in another's peak.

The estimator and the weights' own bytes (`memory.measured_weights_bytes`)
stay in `peftlab.memory`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from .config import RunConfig, with_overrides
from .memory import GiB, measured_weights_bytes, weights_bytes


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

    from . import devices, models
    from .generation import InferenceError, prompt_ids, timed_generate

    if fmt not in FORMATS:
        raise InferenceError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}.")
    dtype = "float32" if fmt == "float32" else "bfloat16"
    config = RunConfig(model_name=model_name, device=device, dtype=dtype, compute_dtype=dtype)
    dev = devices.pick_device(device)
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

    from .devices import pick_device

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
        proc = subprocess.run([sys.executable, "-m", "peftlab.measure", args], capture_output=True, text=True,
                              timeout=timeout_s, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"measuring {fmt} weights of {model_name} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


def main(argv=None) -> int:
    """`python -m peftlab.measure '<json>'`: one `format_run` in this process, its record as JSON on stdout."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    args = json.loads((argv or sys.argv[1:])[0])
    print(json.dumps(format_run(**args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
