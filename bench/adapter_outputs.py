"""Greedy outputs of trained adapters on fixed sentences: the given outputs of exercise 8.

    python bench/adapter_outputs.py \\
        --adapter shakespeare-5ep=runs/session02/adapter \\
        --adapter shakespeare-1ep=runs/session03/shakespeare/adapter \\
        --adapter pirate=runs/session03/pirate/adapter --adapter formal=runs/session03/formal/adapter

Loads SmolLM2-135M-Instruct (the `shakespeare-cpu` preset: bfloat16 on a CPU),
puts every adapter on it under its name, and asks the base and each adapter to
rewrite the same sentences in Shakespeare's style (one batch per system,
greedy, KV cache, stop at <|im_end|>). Writes one JSON record: the sentences,
the instruction, each system's outputs, and where each adapter came from (its
rank and targets, and the run record beside its folder when there is one:
commit, recipe, steps). Exercise 8 ranks these systems by its own metric.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The exercise's sentences: ordinary modern lines, with traps for a careless metric ("thousand", "Before").
PROMPTS = ["Where are you going?", "I love you more than words can say.", "It is late; we should leave.",
           "Why do you weep?", "Give me the letter.", "The king has a thousand soldiers.", "Listen to me, friend.",
           "Before morning we will be gone."]
INSTRUCTION = "Rewrite the sentence in the style of Shakespeare."


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=FOLDER",
                   help="a saved adapter and the name the exercise gives it (repeat)")
    p.add_argument("--preset", default="shakespeare-cpu", help="the base model's recipe (default: shakespeare-cpu)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--out", default="runs/bench/adapter_outputs.json")
    args = p.parse_args(argv)
    adapters = {}
    for item in args.adapter:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            p.error(f"--adapter {item!r}: write NAME=FOLDER, e.g. pirate=runs/session03/pirate/adapter")
        if not (Path(folder) / "adapter_config.json").is_file():
            p.error(f"--adapter {item!r}: {folder} holds no adapter_config.json (a folder save_pretrained wrote)")
        if name in adapters or name == "base":
            p.error(f"--adapter {item!r}: the name {name!r} is taken ('base' is the model without an adapter)")
        adapters[name] = folder
    if not adapters:
        p.error("give at least one --adapter NAME=FOLDER")
    args.adapters = adapters
    return args


def provenance(folder: str) -> dict:
    """The adapter's shape, and the run that trained it where its record sits beside or above the folder."""
    path = Path(folder)
    cfg = json.loads((path / "adapter_config.json").read_text())
    out = {"folder": str(path), "r": cfg.get("r"), "lora_alpha": cfg.get("lora_alpha"),
           "target_modules": sorted(cfg.get("target_modules") or [])}
    for record in (path.parent / "record.json", path.parent.parent / "record.json"):
        if record.is_file():
            rec = json.loads(record.read_text())
            out["run_record"] = str(record)
            out["run_commit"] = rec.get("git_commit")
            out["run_kind"] = rec.get("kind")
            training = (rec.get("training") or {}).get(path.parent.name)
            if training:  # Session 3: one entry per task
                out["steps"] = training.get("steps")
            else:
                cfg_run = rec.get("config", {})
                out["epochs"] = cfg_run.get("num_train_epochs")
                checkpoints = [int(c.name.split("-")[1]) for c in record.parent.glob("checkpoint-*")]
                out["steps"] = max(checkpoints) if checkpoints else None  # Trainer saves one at the last step
            break
    return out


def main(argv=None) -> int:
    args = parse(argv)
    from peftlab import adapters as adapters_mod
    from peftlab import models, multitask
    from peftlab.config import preset
    from peftlab.record import git_commit, hardware, versions, write_record

    config = preset(args.preset)
    tokenizer = models.load_tokenizer(config.model_name)
    model = models.load_model(config)
    for name, folder in args.adapters.items():
        model = adapters_mod.load_adapter(model, folder, adapter_name=name)
    model.eval()
    rows = [{"instruction": INSTRUCTION, "input": text} for text in PROMPTS]
    outputs = {}
    for name in ["base", *args.adapters]:
        route = "__base__" if name == "base" else name
        outputs[name] = multitask.generate_batch(model, tokenizer, rows, adapter_names=[route] * len(rows),
                                                 max_new_tokens=args.max_new_tokens)
        print(f"{name}:", flush=True)
        for src, out in zip(PROMPTS, outputs[name]):
            print(f"  {src!r} -> {out!r}")
    record = {"kind": "adapter_outputs", "model": config.model_name, "dtype": config.dtype, "preset": args.preset,
              "instruction": INSTRUCTION, "prompts": PROMPTS, "max_new_tokens": args.max_new_tokens,
              "outputs": outputs, "adapters": {n: provenance(f) for n, f in args.adapters.items()},
              "commit": git_commit(), "versions": versions(), "hardware": hardware(),
              "command": "python bench/adapter_outputs.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print("record:", write_record(record, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
