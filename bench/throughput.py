"""Throughput: peftlab's training pipeline against a pad-to-max-length baseline.

    python bench/throughput.py [--steps 30] [--max-length 256] [--model tiny-qwen2]

Both runs are the same Trainer + PEFT LoRA on the same data and seed; they
differ only in batching. The baseline pads every example to max_length (what
many tutorials do with `padding="max_length"`); peftlab pads each batch to its
longest example and groups examples of similar length. Tokens/s counts real
(non-padding) tokens, so both numbers measure useful work. Prints both and the
ratio, and writes a JSON record to runs/bench/throughput.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny-qwen2")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default="runs/bench/throughput.json")
    args = parser.parse_args(argv)

    from peftlab import train
    from peftlab.config import RunConfig
    from peftlab.record import make_record, write_record

    base = dict(model_name=args.model, method="lora", r=8, max_steps=args.steps, max_length=args.max_length,
                per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
                eval_each_epoch=False, seed=0, output_dir="runs/bench/tmp")
    results = {}
    for name, kwargs in [
        ("baseline: pad to max_length", dict(pad_to=args.max_length)),
        ("peftlab: dynamic padding, length-grouped", dict(train_sampling_strategy="group_by_length")),
    ]:
        cfg = RunConfig(**base)
        start = time.perf_counter()
        res = train.train(cfg, progress=False, save_strategy="no", **kwargs)
        results[name] = {
            "wall_s": time.perf_counter() - start,
            "train_s": res.wall_s,
            "tokens": res.tokens_seen,
            "tokens_per_s": res.tokens_per_s,
            "peak_memory_bytes": res.peak.bytes,
        }
    (b_name, b), (p_name, p) = results.items()
    ratio = p["tokens_per_s"] / b["tokens_per_s"]
    print(f"\nThroughput on {args.model}, LoRA r=8, {args.steps} steps x batch {args.batch_size}, "
          f"max_length {args.max_length}, {os.cpu_count()} CPU cores")
    for name, r in results.items():
        print(f"  {name:<42} {r['tokens_per_s']:9.0f} real tokens/s  ({r['tokens']} tokens in {r['train_s']:.2f} s)")
    print(f"  speed-up: {ratio:.2f}x")
    record = make_record(RunConfig(**base), kind="throughput", results=results, ratio=ratio)
    print(f"record: {write_record(record, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
