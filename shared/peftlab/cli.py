"""`peftlab train | eval | generate | params | estimate | build-tiny | help-config`.

Every subcommand reads the same RunConfig: a YAML file or preset name via
--config, then `key=value` overrides, e.g.

    peftlab train --config shakespeare-tiny r=8 max_steps=20
    peftlab params --config shakespeare-reference target_modules=all-linear
    peftlab estimate --config shakespeare-reference method=qlora --seq-len 512
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import PRESETS, ConfigError, RunConfig


def _config(args) -> RunConfig:
    return RunConfig.from_yaml(args.config or None, args.overrides)


def cmd_train(args) -> int:
    from . import casestudy

    config = _config(args)
    casestudy.run(config, progress=not args.no_progress)
    return 0


def _model_and_tokenizer(args, config: RunConfig):
    """The base model with --adapter on it, if given, and its tokenizer."""
    from . import adapters, models

    model, tokenizer = models.load(config)
    if args.adapter:
        model = adapters.load_adapter(model, args.adapter)
    return model, tokenizer


def cmd_eval(args) -> int:
    from . import metrics, train

    config = _config(args)
    model, tokenizer = _model_and_tokenizer(args, config)
    _, _, eval_ds, _, rows = train.load_data(config, tokenizer)
    result = metrics.evaluate_model(model, tokenizer, eval_ds, rows, system_prompt=config.system_prompt)
    print(json.dumps({k: v for k, v in result.items() if k != "generations"}, indent=2))
    return 0


def cmd_generate(args) -> int:
    from . import metrics

    config = _config(args)
    model, tokenizer = _model_and_tokenizer(args, config)
    rows = [{"instruction": args.instruction, "input": text, "output": ""} for text in args.text]
    for text, out in zip(args.text, metrics.generate(model, tokenizer, rows, max_new_tokens=args.max_new_tokens)):
        print(f"{text}\n  -> {out}")
    return 0


def cmd_params(args) -> int:
    from .adapters import lora_counts_on_meta

    config = _config(args)
    print(f"{config.model_name} {config.method} r={config.r} targets={config.target_modules}")
    print(lora_counts_on_meta(config.model_name, config))
    return 0


def cmd_estimate(args) -> int:
    import torch

    from . import devices
    from .memory import estimate

    config = _config(args)
    device, bf16 = args.device, None  # None: the dtype rule asks this machine (devices.resolve_dtype)
    if device == "auto":  # this machine: its GPU if it has one (and whether that GPU has bf16), else the CPU
        device = "cuda" if torch.cuda.is_available() else "cpu"
        bf16 = devices.bf16_native() if device == "cuda" else None
    elif device == "cuda-no-bf16":
        device, bf16 = "cuda", False
    where = {"cpu": f"this CPU process (resident memory; {devices.cpu_kind()})",
             "cuda": f"a CUDA GPU {'without' if bf16 is False else 'with'} bfloat16 (max_memory_allocated)"}[device]
    est = estimate(config.model_name, config, seq_len=args.seq_len, device=device, bf16=bf16)
    print(f"{config.model_name} {config.method} quantization={config.quantization} "
          f"batch={config.per_device_train_batch_size} seq={args.seq_len} "
          f"checkpointing={config.gradient_checkpointing} on {where}")
    print(est.table())
    return 0


def cmd_build_tiny(args) -> int:
    import time

    import torch

    from .devices import cpu_kind
    from .tiny import ensure_tiny_model, tiny_model_dir

    built = args.force or not (tiny_model_dir() / "config.json").is_file()
    start = time.perf_counter()
    path = ensure_tiny_model(force=args.force)
    if built:
        print(f"{path} (built in {time.perf_counter() - start:.1f} s on {cpu_kind()}, "
              f"{torch.get_num_threads()} torch threads)")
    else:
        print(f"{path} (already built; --force builds it again)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftlab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_text):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", help=f"YAML file or preset ({', '.join(PRESETS)})")
        p.add_argument("overrides", nargs="*", help="key=value overrides of RunConfig fields")
        p.set_defaults(func=func)
        return p

    t = add("train", cmd_train, "run the case study: evaluate, train, evaluate, save, record")
    t.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    for name, func, text in [("eval", cmd_eval, "held-out perplexity, BLEU, chrF"),
                             ("generate", cmd_generate, "generate for sentences given on the command line")]:
        p = add(name, func, text)
        p.add_argument("--adapter", help="directory of a saved adapter to put on the base")
        if name == "generate":
            p.add_argument("text", nargs="+", help="modern English sentences")
            p.add_argument("--instruction", default="Rewrite the sentence in the style of Shakespeare.")
            p.add_argument("--max-new-tokens", type=int, default=48)
    add("params", cmd_params, "trainable/total parameters, computed on the meta device")
    e = add("estimate", cmd_estimate, "predict peak training memory before loading anything")
    e.add_argument("--seq-len", type=int, default=256)
    e.add_argument("--device", choices=["auto", "cuda", "cuda-no-bf16", "cpu"], default="auto",
                   help="auto: this machine; cuda: a bf16 GPU (Ampere+: A100, L4); cuda-no-bf16: T4, V100 "
                        "(dtype auto becomes float32); cpu")
    b = sub.add_parser("build-tiny", help="build the offline tiny model into the cache")
    b.add_argument("--force", action="store_true")
    b.set_defaults(func=cmd_build_tiny)
    sub.add_parser("help-config", help="list every RunConfig field").set_defaults(
        func=lambda a: print(RunConfig.help()) or 0
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "command", None) == "generate":
        # `text` swallowed the overrides: split key=value items back out.
        args.overrides = [t for t in args.text if "=" in t and " " not in t]
        args.text = [t for t in args.text if t not in args.overrides]
    from .data import DataError
    from .models import ModelNotAvailableError

    try:
        return args.func(args)
    except (ConfigError, DataError, ModelNotAvailableError) as exc:
        print(f"peftlab {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
