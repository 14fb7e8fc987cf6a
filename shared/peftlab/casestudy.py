"""The Shakespearean LoRA case study, end to end: what `make demo` runs.

prepare -> evaluate (before) -> estimate_step -> fine_tune -> measure_step ->
evaluate (after) -> compare -> save adapter, plot, record.

`run` is those steps in order; Session 2's notebook calls the same steps with its
teaching in between, so a step changes in one place for both.

Every quality number is read against the copy-the-input baseline: modern and
Shakespearean sentences share most words, so echoing the input already scores
BLEU ~28 and chrF ~47 on the 82 held-out pairs. A run has taught the style only if
it beats that baseline by more than the bootstrap confidence interval and its
outputs use archaic forms (`metrics.style_share`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from . import adapters, data, devices, measure, memory, metrics, models, threads, train
from .callbacks import Pace
from .config import RunConfig
from .plots import plot_loss
from .record import load_average, make_record, write_record

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
# `make demo` on a CPU is meant to take at most this long on 2 idle cores (README, Which dtype your CPU gets).
DEMO_TARGET_S = 360


def default_preset() -> str:
    """The case study's preset for this machine (`make demo`): the name peftlab.runtime's auto choice
    starts from, Qwen2.5-3B on a CUDA GPU, SmolLM2-135M otherwise. The notebooks use
    `runtime.resolve`, which also applies the T4 recipe on a GPU without bfloat16 and the hub's
    SmolLM2 on a CPU with network."""
    from .runtime import choose, detect

    return choose(detect(check_network=False)).preset


def adapter_bytes(adapter_dir: str | Path) -> int:
    """Bytes of the adapter itself (weights + config), not the tokenizer saved beside it."""
    files = [Path(adapter_dir) / name for name in ADAPTER_FILES]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{adapter_dir}: no {', '.join(missing)}; is this a directory written by save_adapter?")
    return sum(f.stat().st_size for f in files)


def evaluate(model, tokenizer, eval_ds, eval_rows, config: RunConfig, progress: bool = True, log=print) -> dict:
    """Everything the case study measures on one model: held-out loss and perplexity with a
    bootstrap CI, greedy generations, and the forgetting probes (general questions, general text)."""
    if next(model.parameters()).device.type == "cpu":
        threads.fit(log=log)
    losses = metrics.example_losses(model, eval_ds, tokenizer)
    ppl = metrics.perplexity_ci(losses)
    nats = sum(n for n, _ in losses) / sum(c for _, c in losses)
    gens = metrics.generate(model, tokenizer, eval_rows, batch_size=24, system_prompt=config.system_prompt,
                            progress=progress, max_new_tokens=40)
    probe = metrics.knowledge_probe(model, tokenizer, batch_size=24, progress=progress)
    general_ppl = metrics.text_perplexity(model, tokenizer)
    log(f"  held-out perplexity {ppl.score:.2f} +- {ppl.ci:.2f}; general questions {probe['accuracy']:.0%} "
        f"correct; general-text perplexity {general_ppl:.2f}")
    return {"loss": nats, "perplexity": ppl.score, "perplexity_ci": ppl.ci, "generations": gens,
            "knowledge_accuracy": probe["accuracy"], "knowledge_answers": probe["answers"],
            "general_text_perplexity": general_ppl}


@dataclass
class Prepared:
    """What the case study works on: the tokenizer, the base model on its device, and the tokenized data."""

    tokenizer: object
    model: object
    device: object  # torch.device
    train_ds: object
    train_stats: data.DataStats
    eval_ds: object
    eval_stats: data.DataStats
    eval_rows: list


def prepare(config: RunConfig, tokenizer=None, log=print) -> Prepared:
    """Load the tokenizer (unless given), the base model and the train and held-out sets, saying where the
    run computes (device, dtype, threads) and what the data holds."""
    tokenizer = tokenizer if tokenizer is not None else models.load_tokenizer(config.model_name)
    model = models.load_model(config)
    device = next(model.parameters()).device
    log(f"running on     {hardware_line(device, devices.pick_dtype(device, config.dtype))}")
    train_ds, train_stats, eval_ds, eval_stats, eval_rows = train.load_data(config, tokenizer)
    log(f"train data: {train_stats.summary()}")
    log(f"held-out data: {eval_stats.summary()}")
    return Prepared(tokenizer, model, device, train_ds, train_stats, eval_ds, eval_stats, eval_rows)


def heaviest_batch(case: Prepared, config: RunConfig) -> dict:
    """The training batch with the most tokens (the longest rows), where a training step's memory peaks."""
    return data.longest_batch(case.train_ds, case.tokenizer, config.per_device_train_batch_size)


def estimate_step(config: RunConfig, batch: dict, device) -> memory.MemoryEstimate:
    """The estimator's tensors for one training step on `batch` (no runtime overhead: what `measure_step`
    measures), from the model's shapes alone, so it can be asked before training."""
    b, seq_len = batch["input_ids"].shape  # (B, T)
    return memory.estimate(config.model_name, config, seq_len=seq_len, batch_size=b, device=device.type,
                           runtime_bytes=0)


def fine_tune(config: RunConfig, case: Prepared, progress: bool = True, callbacks: list | None = None
              ) -> train.TrainResult:
    """Train the adapter on the prepared model and data (`train.train`), with extra Trainer callbacks
    (e.g. `callbacks.Pace`)."""
    return train.train(config, progress=progress, model=case.model, tokenizer=case.tokenizer, callbacks=callbacks)


def pace(case: Prepared, config: RunConfig, started: float, after_s: float, log=print) -> Pace:
    """The callback that projects the run's time from its first steps; on a CPU it also holds the run
    to `make demo`'s target (DEMO_TARGET_S), saying so where this machine will take longer."""
    dtype = devices.pick_dtype(case.device, config.dtype)
    budget = DEMO_TARGET_S if case.device.type == "cpu" else None
    return Pace(log=log, started=started, after_s=after_s, budget_s=budget, where=hardware_line(case.device, dtype))


def measure_step(result: train.TrainResult, batch: dict) -> measure.StepPeak:
    """One forward and backward pass of the trained model on `batch`, its tensor peak measured."""
    return measure.measure_training_step(result.model, batch, result.trainer.optimizer)


def compare(before: dict, after: dict, eval_rows: list) -> list[dict]:
    """The quality table of the base and trained models' generations, read against copying the input."""
    return metrics.quality_table({"base": before["generations"], "trained": after["generations"]}, eval_rows)


def run(config: RunConfig, progress: bool = True, n_samples: int = 3, log=print) -> dict:
    """Run the case study for `config` and return its record (also written to disk)."""
    start = time.perf_counter()
    log(f"PEFT Lab case study\n{config}")
    case = prepare(config, log=log)
    device, eval_rows = case.device, case.eval_rows

    log("evaluating the base model ...")
    t = time.perf_counter()
    before = evaluate(case.model, case.tokenizer, case.eval_ds, eval_rows, config, progress, log)
    eval_s = time.perf_counter() - t
    heaviest = heaviest_batch(case, config)
    estimate = estimate_step(config, heaviest, device)
    paced = pace(case, config, start, after_s=eval_s, log=log)
    result = fine_tune(config, case, progress, callbacks=[paced])
    config = result.config  # the settings training really used
    counts = adapters.count_parameters(result.model)
    log("measuring one training step's tensor memory on the longest batch ...")
    step = measure_step(result, heaviest)
    log("evaluating the fine-tuned model ...")
    after = evaluate(result.model, case.tokenizer, case.eval_ds, eval_rows, config, progress, log)
    quality = compare(before, after, eval_rows)

    out = Path(config.output_dir)
    adapter_dir = out / "adapter"
    plot_path = out / "loss.png"
    samples = [
        {"input": r["input"], "reference": r["output"], "before": b, "after": a}
        for r, b, a in zip(eval_rows, before["generations"], after["generations"])
    ]
    drop = ("generations", "knowledge_answers")
    record = make_record(
        config,
        kind="case_study",
        wall_s=time.perf_counter() - start,
        eval_wall_s=eval_s,
        train_wall_s=result.wall_s,
        tokens_per_s=result.tokens_per_s,
        pace={"s_per_step": paced.s_per_step, "projected_wall_s": paced.projected_s},
        torch_threads=__import__("torch").get_num_threads(),
        thread_changes=result.thread_changes,
        dtype=str(devices.pick_dtype(device, config.dtype)).removeprefix("torch."),
        device=str(device),
        load_average=load_average(),
        peak_memory_bytes=result.peak.bytes,
        peak_memory_source=result.peak.source,
        step_peak_bytes=step.bytes,
        step_peak_source=step.source,
        step_batch_shape=list(step.batch_shape),
        estimated_peak_bytes=estimate.total,
        params={"trainable": counts.trainable, "total": counts.total, "percent": counts.percent},
        data={"train": vars(result.train_stats) | {"lengths": None}, "eval": vars(case.eval_stats) | {"lengths": None}},
        steps=result.trainer.state.global_step,
        history={"train": result.history.train, "eval": result.history.eval},
        epoch_mean_loss=result.history.epoch_means(),
        before={k: v for k, v in before.items() if k not in drop},
        after={k: v for k, v in after.items() if k not in drop},
        quality=quality,
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
    record["adapter_bytes"] = adapter_bytes(adapter_dir)  # adapter files only, not the tokenizer
    record_path = write_record(record, out / "record.json")
    log(summary(record, record_path, n_samples))
    return record


def quality_lines(quality: list[dict]) -> list[str]:
    """The quality table as text: copy-the-input first, then base, trained, references."""
    lines = [f"  {'system':<16} {'BLEU':>12} {'chrF':>12} {'chrF gain vs copy':>18} {'archaic':>8}"]
    for q in quality:
        gain = "" if q["system"] == "copy the input" else f"{q['chrF gain']:+.1f} +- {q['chrF gain 95% CI']:.1f}"
        lines.append(f"  {q['system']:<16} {q['BLEU']:>5.1f} +- {q['BLEU 95% CI']:>4.1f} "
                     f"{q['chrF']:>5.1f} +- {q['chrF 95% CI']:>4.1f} {gain:>18} {q['archaic share']:>8.0%}")
    return lines


def beats_copying(trained: dict) -> bool:
    """The case study's bar: chrF above copying the input by more than the CI of that difference."""
    return trained["chrF gain"] - trained["chrF gain 95% CI"] > 0


def verdict(quality: list[dict]) -> str:
    """One honest sentence reading the trained model against the copy-the-input baseline."""
    rows = {q["system"]: q for q in quality}
    trained = rows.get("trained")
    if trained is None:
        return ""
    gain, ci, style = trained["chrF gain"], trained["chrF gain 95% CI"], trained["archaic share"]
    if beats_copying(trained) and style >= 0.4:
        return (f"the trained model beats copying the input by {gain:.1f} chrF (more than the {ci:.1f} CI of that "
                f"difference) and {style:.0%} of its outputs use archaic forms: it learned the style.")
    if gain <= 0:
        return f"the trained model does not beat copying the input on chrF ({gain:+.1f}): it has not learned the task."
    return (f"the trained model is {gain:+.1f} chrF from copying the input (CI of the difference {ci:.1f}) and "
            f"{style:.0%} of its outputs use archaic forms: not clearly better than copying.")


def estimator_error(record: dict) -> float:
    """(estimated - measured) / measured tensor peak of the case study's training step."""
    return record["estimated_peak_bytes"] / record["step_peak_bytes"] - 1


def memory_lines(record: dict) -> list[str]:
    """The estimator against the measured tensor peak of one step, and the process's peak beside it."""
    b, seq_len = record["step_batch_shape"]
    step, est = record["step_peak_bytes"], record["estimated_peak_bytes"]
    return [
        f"memory         one training step on the longest batch ({b} x {seq_len} tokens): "
        f"{step / 2**30:.2f} GiB of tensors measured ({record['step_peak_source']}), "
        f"{est / 2**30:.2f} GiB estimated ({100 * estimator_error(record):+.1f}%)",
        f"               training's peak {record['peak_memory_bytes'] / 2**30:.2f} GiB "
        f"({record['peak_memory_source']}: on a CPU this adds Python, the libraries and freed memory "
        "the allocator keeps)",
    ]


def _where(record: dict) -> str:
    hw = record.get("hardware", {})
    if str(record.get("device", "cpu")).startswith("cuda"):
        return f"{record['device']} ({hw.get('gpu', 'GPU')})"
    return f"cpu ({hw.get('cpu_kind', 'CPU kind not recorded')})"


def _threads(record: dict) -> str:
    text = f"{record.get('torch_threads', '?')} torch threads"
    changes = record.get("thread_changes") or []
    if len({n for _, n in changes} | {record.get("torch_threads")}) > 1:
        text += " at the end; in training " + ", ".join(f"{n} from step {step}" for step, n in changes) + \
            ", as other processes took or left cores"
    return text


def hardware_line(device, dtype) -> str:
    """'cpu (AVX2, no native bfloat16), float32, 2 torch threads': what a time in this run depends on."""
    import torch

    where = f"cpu ({devices.cpu_kind()})" if device.type == "cpu" else str(device)
    return f"{where}, {str(dtype).removeprefix('torch.')}, {torch.get_num_threads()} torch threads"


def summary(record: dict, record_path: Path | str, n_samples: int = 3) -> str:
    p, b, a = record["params"], record["before"], record["after"]
    lines = [
        "",
        "=== Summary ===",
        f"model          {record['config']['model_name']} ({record['config']['method']}, r={record['config']['r']})",
        f"ran on         {_where(record)}, {record.get('dtype', record['config']['dtype'])}, "
        f"{_threads(record)}",
        f"parameters     trainable {p['trainable']:,} / total {p['total']:,} ({p['percent']:.4f}%)",
        f"held-out ppl   before {b['perplexity']:.2f} +- {b['perplexity_ci']:.2f} -> "
        f"after {a['perplexity']:.2f} +- {a['perplexity_ci']:.2f}",
        "held-out quality (95% bootstrap CIs; gain = chrF minus copying the input, paired bootstrap CI):",
        *quality_lines(record["quality"]),
        f"verdict        {verdict(record['quality'])}",
        f"forgetting     general questions {b['knowledge_accuracy']:.0%} -> {a['knowledge_accuracy']:.0%} correct; "
        f"general-text perplexity {b['general_text_perplexity']:.2f} -> {a['general_text_perplexity']:.2f}",
        "training loss  epoch means " + ", ".join(f"{e}: {v:.3f}" for e, v in record["epoch_mean_loss"]),
        f"training       {record['steps']} steps in {record['train_wall_s']:.1f} s, "
        f"{record['tokens_per_s']:.0f} tokens/s",
        *memory_lines(record),
    ]
    for s in record["samples"][:n_samples]:
        lines += [
            f"sample input   {s['input']}",
            f"  reference    {s['reference']}",
            f"  before       {s['before'] or '(empty)'}",
            f"  after        {s['after'] or '(empty)'}",
        ]
    lines += [f"adapter        {record['adapter_dir']} ({record['adapter_bytes'] / 1024:.0f} KiB, adapter files only)",
              f"run record     {record_path} (wall {record['wall_s']:.0f} s)", f"loss plot      {record['plot']}"]
    return "\n".join(lines)
