"""The case study's training step on this CPU: dtype x torch threads x a second busy process.

    python bench/cpu_speed.py [--steps 4] [--dtypes float32 bfloat16] [--threads 1 2 0] [--busy 0 1]
                              [--losses shared labelled plain] [--onednn on off] [--repeat 1]
                              [--simulate-avx2] [--matmul-only] [--out runs/bench/cpu_speed.json]

Each cell runs in a fresh process: preset `shakespeare-cpu` (SmolLM2-135M-Instruct) for
`--steps` optimizer steps, timing every step after the first (the first pays for kernel
selection and allocation). `--busy 1` starts one process that spins a core for the whole cell,
as another program on a student's laptop would. `--threads 0` is the course's default: no count
pinned, torch's threads fitted to the free cores (`peftlab.threads`); a count above 0 is pinned
with PEFTLAB_THREADS, as a user would. `--losses` picks the forward and loss of each cell: `shared`
is the course trainer's (logits only where a label is, and the batch's shared opening tokens run
once), `labelled` the same with every row run whole, `plain` transformers' own (logits everywhere).
`--simulate-avx2` runs every cell with torch, oneDNN and MKL held to AVX2 (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2,
MKL_ENABLE_INSTRUCTIONS=AVX2): on a CPU with AVX512-BF16 or AMX it shows what a CPU without them
does, emulated bfloat16 included. Every row records the CPU kind torch saw and the dtype it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CELL = r"""
import json, sys, time, tempfile
import torch
from transformers import TrainerCallback
from peftlab import config as C, devices, models, train

dtype, threads, steps, loss, onednn = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
torch.backends.mkldnn.enabled = onednn == "on"
if loss == "plain":
    train.response_logits_supported = lambda model: False
if loss == "labelled":
    train.prefix_sharing_supported = lambda model: False
if threads:
    torch.set_num_threads(threads)
cfg = C.preset("shakespeare-cpu", dtype=dtype, max_steps=steps, output_dir=tempfile.mkdtemp(),
               save_strategy="no", logging_steps=1)
times = []

class Clock(TrainerCallback):
    def on_step_begin(self, *a, **k):
        self.t = time.perf_counter()

    def on_step_end(self, *a, **k):
        times.append(time.perf_counter() - self.t)

from transformers import Trainer
_init = Trainer.__init__
def _with_clock(self, *a, **k):
    _init(self, *a, **k)
    self.add_callback(Clock())
Trainer.__init__ = _with_clock
result = train.train(cfg, progress=False)
print(json.dumps({"threads_at_start": result.thread_changes[0][1] if result.thread_changes else threads,
                  "threads_at_end": torch.get_num_threads(), "thread_changes": result.thread_changes,"dtype_ran": models.pick_dtype(torch.device("cpu"), dtype).__repr__().removeprefix("torch."),
                  "cpu_kind": devices.cpu_kind(), "capability": torch.backends.cpu.get_cpu_capability(),
                  "step_s": times}))
"""


MATMUL = r"""
import json, time, torch
torch.set_num_threads(1)
a32, b32 = torch.randn(576, 576), torch.randn(576, 1536)
out = {"capability": torch.backends.cpu.get_cpu_capability()}
for name in ("float32", "bfloat16"):
    a, b = a32.to(getattr(torch, name)), b32.to(getattr(torch, name))
    a @ b
    times = []
    for _ in range(5):
        t = time.perf_counter(); a @ b; times.append(time.perf_counter() - t)
    out[name + "_ms"] = 1000 * min(times)
print(json.dumps(out))
"""


def matmul_row(env: dict, label: str) -> dict:
    """One thread, the same 576x576 @ 576x1536 product in float32 and bfloat16, best of 5."""
    proc = subprocess.run([sys.executable, "-c", MATMUL], capture_output=True, text=True, env=env, check=True)
    row = {"kernels": label, **json.loads(proc.stdout.strip().splitlines()[-1])}
    row["bf16_over_fp32"] = row["bfloat16_ms"] / row["float32_ms"]
    return row


def run_cell(dtype: str, threads: int, busy: int, steps: int, env: dict, loss: str = "shared",
             onednn: str = "on") -> dict:
    env = {k: v for k, v in env.items() if k not in ("PEFTLAB_THREADS", "OMP_NUM_THREADS")}
    if threads:
        env["PEFTLAB_THREADS"] = str(threads)
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CELL, dtype, str(threads), str(steps), loss, onednn],
                              capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    if proc.returncode != 0:
        return {"dtype": dtype, "threads": threads, "busy": busy, "loss": loss, "onednn": onednn,
                "error": proc.stderr[-2000:]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    timed = out["step_s"][1:] or out["step_s"]
    timed = sorted(timed)
    return {"dtype": dtype, "threads": threads, "busy": busy, "loss": loss, "onednn": onednn, "wall_s": wall,
            "s_per_step": sum(timed) / len(timed), "median_s_per_step": timed[len(timed) // 2],
            "steps_timed": len(timed), **out}


def torch_is_x86() -> bool:
    import platform

    return platform.machine().lower() in ("x86_64", "amd64")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2, 0],
                        help="torch threads per cell; 0: the course's default, fitted to the free cores")
    parser.add_argument("--busy", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--losses", nargs="+", default=["shared"], choices=["shared", "labelled", "plain"],
                        help="the course trainer's (logits at labelled positions, the batch's shared opening "
                             "tokens run once), the same without the shared opening, and/or transformers' own")
    parser.add_argument("--onednn", nargs="+", default=["on"], choices=["on", "off"],
                        help="oneDNN on (torch's default) or off; several values alternate, each cell in turn")
    parser.add_argument("--repeat", type=int, default=1, help="run the whole grid this many times, interleaved")
    parser.add_argument("--simulate-avx2", action="store_true")
    parser.add_argument("--matmul-only", action="store_true", help="only the matrix product, no training steps")
    parser.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE",
                        help="environment for every cell, e.g. OMP_WAIT_POLICY=PASSIVE")
    parser.add_argument("--out", default="runs/bench/cpu_speed.json")
    args = parser.parse_args(argv)

    from peftlab import record, smollm
    from peftlab.devices import AVX2_ONLY_ENV

    smollm.ensure_smollm()
    extra = dict(item.split("=", 1) for item in args.env)
    env = dict(os.environ) | (AVX2_ONLY_ENV if args.simulate_avx2 else {}) | extra
    result = {"hardware": record.hardware(), "cpu_count": os.cpu_count(), "versions": record.versions(),
              "commit": record.git_commit(), "simulate_avx2": args.simulate_avx2, "env": extra,
              "busy_cores_at_start": record.busy_cores(), "rows": [], "matmul": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    labels = [("this CPU's own", dict(os.environ))]
    if torch_is_x86():
        labels.append(("held to AVX2", dict(os.environ) | AVX2_ONLY_ENV))
    for label, matmul_env in labels:
        row = matmul_row(matmul_env, label)
        result["matmul"].append(row)
        print(f"576x576 @ 576x1536, 1 thread, {label} kernels ({row['capability']}): float32 "
              f"{row['float32_ms']:.1f} ms, bfloat16 {row['bfloat16_ms']:.1f} ms ({row['bf16_over_fp32']:.1f}x)",
              flush=True)
    out.write_text(json.dumps(result, indent=2))
    for dtype in [] if args.matmul_only else args.dtypes:
        for threads in args.threads:
            grid = [(b, ls, o) for b in args.busy for ls in args.losses for o in args.onednn] * args.repeat
            for busy, loss, onednn in grid:
                row = run_cell(dtype, threads, busy, args.steps, env, loss, onednn)
                result["rows"].append(row)
                out.write_text(json.dumps(result, indent=2))  # an interrupted run keeps its rows
                if "error" in row:
                    print(f"{dtype} threads={threads} busy={busy}: FAILED\n{row['error']}", flush=True)
                else:
                    label = threads or f"auto ({row['threads_at_end']} at the end)"
                    print(f"{row['cpu_kind']} | {row['dtype_ran']:8} | threads {label} | busy {busy} | {loss} loss | oneDNN {onednn} | "
                          f"{row['s_per_step']:.2f} s/step (median {row['median_s_per_step']:.2f}) over {row['steps_timed']} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
