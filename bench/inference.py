"""Inference speed and memory of LoRA serving: unmerged, merged, several adapters in one batch.

    python bench/inference.py                  # SmolLM2-135M-Instruct on a CPU (minutes; batch 16 without the cache costs most)
    python bench/inference.py --size smoke     # the tiny model, a small grid (CI)
    python bench/inference.py --model Qwen/Qwen2.5-3B-Instruct --device cuda   # any Qwen2.5 on a GPU
    python bench/inference.py --adapters shakespeare=runs/session03/shakespeare/adapter formal=... pirate=...

Everything is measured by `peftlab.inference` (its docstring says how): greedy
generation of a fixed number of new tokens on fixed-length prompts, for batch
sizes 1 to 16, KV cache on and off, warm-up excluded, median of --repeats
with min and max; the merge + unmerge round trip in float32 and bfloat16;
weights and resident peak in float32, bfloat16 and NF4, each in a fresh
process; the estimator's GPU prediction. Without --adapters the adapters are
untrained (random A and B, the recipe of --preset): timing does not depend on
what they learned, but the merge round trip does depend on their size.

Writes record.json, table.md, throughput.png and kv_cache.png under --out
(default runs/bench/inference); `bench/report.py` renders the README section.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZES = {
    # batch sizes, batch sizes without the cache, prompt tokens, new tokens, repeats, curve tokens, round trips
    "full": dict(preset="shakespeare-cpu", batch_sizes=[1, 2, 4, 8, 16], no_cache=[1, 4, 16], prompt=32,
                 new=16, repeats=3, curve=32, rounds=5),
    "smoke": dict(preset="shakespeare-tiny", batch_sizes=[1, 4], no_cache=[1], prompt=8, new=4, repeats=1,
                  curve=6, rounds=2),
}
TARGETS = ["q_proj", "v_proj", "o_proj"]  # Session 3's adapters: three of them fit one mixed batch


def table_md(speed: list[dict]) -> str:
    """tokens/s per variant and batch size (median, min-max), KV cache on and off; first-token and per-token ms."""
    lines = ["| variant | KV cache | batch | tokens/s (min-max) | first token ms | per token ms |",
             "|---|---|---:|---:|---:|---:|"]
    for r in sorted(speed, key=lambda r: (not r["use_cache"], r["variant"], r["batch_size"])):
        t = r["tokens_per_s"]
        lines.append(f"| {r['variant']} | {'on' if r['use_cache'] else 'off'} | {r['batch_size']} | "
                     f"{t['median']:.1f} ({t['min']:.1f}-{t['max']:.1f}) | {r['first_token_ms']['median']:.0f} | "
                     f"{r['per_token_ms']['median']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--model", default=None, help="model_name instead of the size's preset model")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default=None, help="weight dtype; default: the preset's (bfloat16 for SmolLM2)")
    parser.add_argument("--adapters", nargs="*", default=[], metavar="NAME=DIR",
                        help="saved adapters to serve (default: three untrained ones)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="instead of the size's batch sizes")
    parser.add_argument("--no-cache-batch-sizes", type=int, nargs="+", default=None,
                        help="batch sizes measured without the KV cache (default: the size's)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per cell (default: the size's)")
    parser.add_argument("--out", default="runs/bench/inference")
    args = parser.parse_args(argv)

    import torch
    from peftlab import inference as inf
    from peftlab import models, record
    from peftlab.config import preset

    if args.threads:
        torch.set_num_threads(args.threads)
    size = dict(SIZES[args.size])
    for key, value in (("batch_sizes", args.batch_sizes), ("no_cache", args.no_cache_batch_sizes),
                       ("repeats", args.repeats)):
        if value is not None:
            size[key] = value
    adapter_dirs = {}
    for item in args.adapters:
        name, sep, path = item.partition("=")
        if not sep or not (Path(path) / "adapter_config.json").is_file():
            parser.error(f"--adapters {item!r}: write NAME=DIR, DIR holding an adapter_config.json")
        adapter_dirs[name] = path
    changes = {"device": args.device, "target_modules": TARGETS, "output_dir": args.out}
    if args.model:
        changes["model_name"] = args.model
    if args.dtype:
        changes["dtype"] = args.dtype
    config = preset(size["preset"], **changes)
    out = Path(args.out)
    start, load_start = time.perf_counter(), os.getloadavg()
    print(f"{config.model_name} on {args.device}, {torch.get_num_threads()} torch threads, load average "
          f"{load_start[0]:.1f} on {os.cpu_count()} cores", flush=True)

    model = inf.load_served(config, adapter_dirs or None)
    tokenizer = models.load_tokenizer(config.model_name)
    names = list(model.peft_config)
    variants = inf.build_variants(model, names)
    speed = inf.measure(variants, tokenizer, size["batch_sizes"], (True, False), size["prompt"], size["new"],
                        size["repeats"], 1, size["no_cache"])
    print(table_md(speed), flush=True)
    ups = inf.speedups(speed)
    curve = inf.cache_curve(variants["merged"], tokenizer, new_tokens=size["curve"], prompt_tokens=size["prompt"])
    ids = inf.prompt_ids(tokenizer, len(names), size["prompt"])
    merged_agree = inf.merged_agreement(variants, ids)
    mixed_agree = inf.mixed_agreement(model, ids, names)
    del variants["merged"]
    roundtrip = []
    for dtype in (torch.float32, torch.bfloat16):
        clone = copy.deepcopy(model).to(dtype)
        roundtrip.append(inf.merge_roundtrip(clone, names[0], ids, rounds=size["rounds"]))
        del clone
    mem = inf.memory_by_format(config.model_name, device=args.device)
    wall = time.perf_counter() - start

    rec = record.make_record(
        config, kind="bench-inference", size=args.size, grid={k: size[k] for k in ("batch_sizes", "no_cache", "repeats")}, adapters=adapter_dirs or "untrained (random A and B)",
        adapter_names=names, conditions={"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                                         "load_average_start": list(load_start), "load_average_end": list(os.getloadavg())},
        wall_s=wall, speed=speed, speedups=ups, cache_curve=curve, merged_agreement=merged_agree,
        mixed_agreement=mixed_agree, merge_roundtrip=roundtrip, memory=mem, gpu_prediction=inf.gpu_prediction())
    record.write_record(rec, out / "record.json")
    (out / "table.md").write_text(table_md(speed) + "\n")
    inf.plot_throughput(speed, out / "throughput.png")
    inf.plot_cache_curve(curve, out / "kv_cache.png")

    for u in ups:
        print(f"{u['variant']:>8} / unmerged, batch {u['batch_size']:>2}, cache {'on ' if u['use_cache'] else 'off'}: "
              f"{u['speed-up vs unmerged']:.2f}x")
    for r in roundtrip:
        print(f"merge + unmerge x{len(r['rounds'])} in {r['dtype']}: max |W - W0| {r['max_abs_weight_error']:.2e} "
              f"(largest |W0| {r['max_abs_w0']:.2f}), logits moved by up to {r['max_logit_change']:.2e}")
    for m in mem:
        if "skipped" in m:
            print(f"{m['format']}: skipped ({m['skipped']})")
        else:
            print(f"{m['format']:>8}: weights {m['weights_bytes'] / 2**20:7.1f} MiB, process peak "
                  f"{m['process_peak_bytes'] / 2**20:7.1f} MiB, {m['tokens_per_s']:.1f} tokens/s at batch {m['batch_size']}")
    print(f"merged model agrees with the unmerged one on {merged_agree['token_agreement']:.0%} of greedy tokens; "
          f"mixed batch rows equal to each adapter alone: {sum(mixed_agree['rows_equal'])} of {len(names)}")
    print(f"wall time {wall / 60:.1f} min; record: {out / 'record.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
