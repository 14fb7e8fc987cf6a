"""The Shakespearean LoRA case study, end to end: what `make demo` runs.

evaluate (before) -> train -> evaluate (after) -> save adapter, plot, record.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import adapters, metrics, models, train
from .config import RunConfig
from .plots import plot_loss
from .record import make_record, write_record


def run(config: RunConfig, progress: bool = True, n_samples: int = 3, log=print) -> dict:
    """Run the case study for `config` and return its record (also written to disk)."""
    start = time.perf_counter()
    log(f"PEFT Lab case study\n{config}")
    tokenizer = models.load_tokenizer(config.model_name)
    model = models.load_model(config)
    train_ds, train_stats, eval_ds, eval_stats, eval_rows = train.load_data(config, tokenizer)
    log(f"train data: {train_stats.summary()}")
    log(f"held-out data: {eval_stats.summary()}")

    log("evaluating the base model on the held-out set ...")
    before = metrics.evaluate_model(model, tokenizer, eval_ds, eval_rows, system_prompt=config.system_prompt)
    result = train.train(config, progress=progress, model=model, tokenizer=tokenizer)
    config = result.config  # the settings training really used
    counts = adapters.count_parameters(result.model)
    log("evaluating the fine-tuned model on the held-out set ...")
    after = metrics.evaluate_model(
        result.model, tokenizer, eval_ds, eval_rows, system_prompt=config.system_prompt
    )

    out = Path(config.output_dir)
    adapter_dir = out / "adapter"
    plot_path = out / "loss.png"
    samples = [
        {"input": r["input"], "reference": r["output"], "before": b, "after": a}
        for r, b, a in zip(eval_rows[:n_samples], before["generations"], after["generations"])
    ]
    record = make_record(
        config,
        kind="case_study",
        wall_s=time.perf_counter() - start,
        train_wall_s=result.wall_s,
        tokens_per_s=result.tokens_per_s,
        peak_memory_bytes=result.peak.bytes,
        peak_memory_source=result.peak.source,
        params={"trainable": counts.trainable, "total": counts.total, "percent": counts.percent},
        data={"train": vars(result.train_stats) | {"lengths": None}, "eval": vars(eval_stats) | {"lengths": None}},
        steps=result.trainer.state.global_step,
        history={"train": result.history.train, "eval": result.history.eval},
        before={k: v for k, v in before.items() if k != "generations"},
        after={k: v for k, v in after.items() if k != "generations"},
        samples=samples,
        world_size=train.world_size(),
        tokens_seen=result.tokens_seen,
        adapter_dir=str(adapter_dir),
        plot=str(plot_path),
    )
    if not train.is_main_process():
        # Under torchrun every rank trains, but one writes: ranks writing the same
        # files would race (record.json.tmp) and leave whichever finished last.
        log(f"rank {train.rank()} of {train.world_size()}: outputs are written by rank 0")
        return record
    train.save_outputs(result)
    config.save(out / "config.yaml")
    plot_loss(result.history, plot_path, title=f"{config.method} on {config.model_name}")
    record["adapter_bytes"] = adapters.dir_size(adapter_dir)
    record_path = write_record(record, out / "record.json")
    log(summary(record, record_path))
    return record


def summary(record: dict, record_path: Path | str) -> str:
    p, b, a = record["params"], record["before"], record["after"]
    lines = [
        "",
        "=== Summary ===",
        f"model          {record['config']['model_name']} ({record['config']['method']}, r={record['config']['r']})",
        f"parameters     trainable {p['trainable']:,} / total {p['total']:,} ({p['percent']:.4f}%)",
        f"held-out ppl   before {b['perplexity']:.2f} -> after {a['perplexity']:.2f}",
        f"BLEU / chrF    before {b['bleu']:.1f} / {b['chrf']:.1f} -> after {a['bleu']:.1f} / {a['chrf']:.1f}",
        f"training       {record['steps']} steps in {record['train_wall_s']:.1f} s, "
        f"{record['tokens_per_s']:.0f} tokens/s, peak memory {record['peak_memory_bytes'] / 2**20:.0f} MiB",
    ]
    for s in record["samples"][:1]:
        lines += [
            f"sample input   {s['input']}",
            f"  reference    {s['reference']}",
            f"  before       {s['before'] or '(empty)'}",
            f"  after        {s['after'] or '(empty)'}",
        ]
    lines += [f"adapter        {record['adapter_dir']} ({record['adapter_bytes'] / 1024:.0f} KiB)",
              f"run record     {record_path}", f"loss plot      {record['plot']}"]
    return "\n".join(lines)
