"""PEFT methods compared at equal steps (Session 4 at full size): one record per method, a table, two plots.

    python bench/methods.py                         # SmolLM2-135M-Instruct on the CPU, 64 steps per method
    python bench/methods.py --model Qwen/Qwen2.5-0.5B-Instruct --device cuda
    python bench/methods.py --size smoke            # the tiny model, 2 steps, in-process: what CI runs

Every method trains the same number of optimizer steps on the Shakespeare pairs with the same seed
(`peftlab.methods`), each in its own process so that its peak memory is its own (resident high-water
mark on a CPU, `max_memory_allocated` on CUDA). Writes `<out>/<method>.json`, `<out>/summary.json`
(conditions: commit, cores, torch threads, load average), `<out>/table.md`, `<out>/methods.png` and
`<out>/adalora.png`; `bench/report.py` puts the table into the README.
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

SIZES = {  # steps, held-out rows generated, new tokens, model, in its own process per method
    "full": dict(steps=64, n_generate=None, max_new_tokens=40, model="smollm2-135m", separate=True),
    "smoke": dict(steps=2, n_generate=2, max_new_tokens=4, model="tiny-qwen2", separate=False),
}


def base_config(model: str, device: str, dtype: str):
    """The case study's recipe for this model: shakespeare-cpu (SmolLM2) or shakespeare-reference (Qwen2.5)."""
    from peftlab.config import preset
    from peftlab.tiny import TINY_NAME

    name = "shakespeare-reference" if model.lower().startswith("qwen/") else "shakespeare-cpu"
    if model == TINY_NAME:
        name = "shakespeare-tiny"
    # float32 on a CPU: full fine-tuning in bfloat16 would round away updates below 2^-8 of a weight.
    return preset(name, model_name=model, device=device, dtype=dtype)


def parse(argv=None):
    from peftlab.methods import METHODS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=SIZES, default="full")
    p.add_argument("--model", help="model_name (default: smollm2-135m; smoke: tiny-qwen2); any Qwen2.5 hub name")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", default="auto", help="auto: float32 on a CPU, bfloat16 on a GPU that has it")
    p.add_argument("--steps", type=int, help="optimizer steps per method (full: 64, smoke: 2)")
    p.add_argument("--n-generate", type=int, help="held-out rows generated and scored (default: all of them)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from " + ", ".join(METHODS))
    p.add_argument("--out", default="runs/bench/methods")
    p.add_argument("--one", help=argparse.SUPPRESS)  # run one method in this process (the parent's child)
    args = p.parse_args(argv)
    size = SIZES[args.size]
    for key in ("steps", "n_generate", "max_new_tokens", "model"):
        if getattr(args, key) is None:
            setattr(args, key, size[key])
    args.separate = size["separate"]
    return args


def child_command(args, name: str) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--size", args.size, "--model", args.model,
           "--device", args.device, "--dtype", args.dtype, "--steps", str(args.steps),
           "--max-new-tokens", str(args.max_new_tokens), "--out", args.out, "--one", name]
    if args.n_generate is not None:
        cmd += ["--n-generate", str(args.n_generate)]
    return cmd


def main(argv=None) -> int:
    args = parse(argv)
    import torch
    from peftlab import methods, models
    from peftlab.record import git_commit, hardware, versions, write_record

    dtype = args.dtype
    if dtype == "auto":
        dtype = "float32" if models.pick_device(args.device).type == "cpu" else "auto"
    base = base_config(args.model, args.device, dtype)
    out = Path(args.out)
    if args.one:
        methods.run_method(base, args.one, args.steps, out, args.n_generate, args.max_new_tokens, progress=False)
        return 0
    names = [m.name for m in methods.resolve(args.methods)]
    for name in names:
        methods.method_config(base, name, args.steps, out)  # bad arguments fail here, before any training
    out.mkdir(parents=True, exist_ok=True)
    start, load_start = time.perf_counter(), list(os.getloadavg())
    print(f"{len(names)} methods x {args.steps} steps on {args.model} ({args.device}, {dtype}); "
          f"load average {load_start[0]:.1f} on {os.cpu_count()} cores", flush=True)
    records = []
    for name in names:
        t0 = time.perf_counter()
        if args.separate:
            proc = subprocess.run(child_command(args, name), capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-4000:], file=sys.stderr)
                print(f"{name}: failed (exit {proc.returncode})", file=sys.stderr)
                return 1
            rec = json.loads((out / f"{name}.json").read_text())
        else:
            rec = methods.run_method(base, name, args.steps, out, args.n_generate, args.max_new_tokens,
                                     progress=False)
        records.append(rec)
        print(f"{rec['label']:>16}: {rec['trainable']:>11,} trainable ({rec['trainable_percent']:.3f}%), peak "
              f"{rec['peak_bytes'] / 2**20:,.0f} MiB, {rec['step_s']:.2f} s/step, held-out ppl {rec['perplexity']:.2f}, "
              f"chrF {rec['chrf']:.1f}, archaic {rec['style_share']:.0%}  ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    md = methods.markdown_table(records)
    (out / "table.md").write_text(md + "\n")
    methods.plot_methods(records, out / "methods.png", title=f"{len(names)} methods x {args.steps} steps, {args.model}")
    ada = next((r["adalora"] for r in records if r.get("adalora")), None)
    if ada:
        methods.plot_allocation(ada, out / "adalora.png")
    summary = {
        "command": "python bench/methods.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "size": args.size, "model": args.model, "device": args.device, "dtype": dtype, "steps": args.steps,
        "n_generate": records[0]["n_generate"], "max_new_tokens": args.max_new_tokens, "methods": names,
        "separate_processes": args.separate, "commit": git_commit(), "versions": versions(), "hardware": hardware(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "load_average_at_start": load_start,
        "load_average_at_end": list(os.getloadavg()), "wall_s": time.perf_counter() - start,
    }
    write_record(summary, out / "summary.json")
    print(md)
    if ada:
        print(f"AdaLoRA: {ada['allocated']} ranks allocated of a budget of {ada['budget']} "
              f"over {len(ada['layers'])} layers x {len(ada['modules'])} modules")
    print(f"records in {out}/ ({summary['wall_s'] / 60:.1f} min; load average {load_start[0]:.1f} at start, "
          f"{summary['load_average_at_end'][0]:.1f} at the end)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
