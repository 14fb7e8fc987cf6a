"""PEFT methods compared at equal steps: one base model, one data set, one seed, one record per method.

Each method trains the same number of optimizer steps on the same batches in
the same order (same seed) from a fresh copy of the base model, and is then
scored on the same held-out rows: trainable parameters, peak memory of the
training phase, time per optimizer step, held-out perplexity, chrF and the
archaic-style share (`metrics.style_share`). What each method changes
(the paper section is in `Method.paper`):

    method      what trains                                         where it acts
    full        every weight                                        everywhere
    lora        B (d_out, r) @ A (r, d_in), scaled by alpha / r     beside frozen linear layers
    rslora      the same, scaled by alpha / sqrt(r)                 (one flag: use_rslora)
    dora        LoRA on the direction + a magnitude per column      beside frozen linear layers
    adalora     P diag(E) Q, rank pruned to a global budget         beside frozen linear layers
    ia3         vectors multiplying activations element-wise        peft on Qwen2: q, v outputs, down_proj input
    prefix      an MLP that emits keys/values for n virtual tokens  every attention layer (deep)
    ptuning_v2  the keys/values of n virtual tokens, directly       every attention layer (deep)
    prompt      n virtual token embeddings                          the input only

Learning rates differ on purpose (`Method.learning_rate`): one rate for all
would compare a rate, not the methods. Each record keeps the rate it used.
"""

from __future__ import annotations

import gc
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import adapters, metrics, models, train
from .config import ConfigError, RunConfig, with_overrides
from .record import make_record, write_record


@dataclass(frozen=True)
class Method:
    """One compared method: the RunConfig fields that make it, and what the paper says it changes."""

    name: str
    label: str
    overrides: dict = field(default_factory=dict)
    learning_rate: float | None = None  # None: the base config's rate (the LoRA recipe's)
    paper: str = ""
    changes: str = ""


# The recipes Session 4 compares, by name (rsLoRA is LoRA with one flag): not config.METHODS, the values
# RunConfig.method accepts, nor multitask.COMBINATIONS, the ways of combining adapters.
METHODS: dict[str, Method] = {m.name: m for m in [
    # float32 weights whatever the base config says: in 16-bit weights AdamW's small updates round away.
    Method("full", "full fine-tuning", {"method": "full", "dtype": "float32"}, 5e-5,
           "Howard & Ruder 2018 (ULMFiT); the baseline of every PEFT paper",
           "every weight of the model trains"),
    Method("lora", "LoRA", {"method": "lora", "use_rslora": False}, None,
           "Hu et al. 2021, section 4.1",
           "W stays frozen; (alpha / r) B A is added, B (d_out, r) starts at zero"),
    Method("rslora", "rsLoRA", {"method": "lora", "use_rslora": True}, None,
           "Kalajdzievski 2023, section 3",
           "LoRA scaled by alpha / sqrt(r) instead of alpha / r, so the update's size does not shrink as r grows"),
    Method("dora", "DoRA", {"method": "dora"}, None,
           "Liu et al. 2024, section 4.1",
           "W = m * (W0 + B A) / ||W0 + B A||: a trainable magnitude per output and LoRA on the direction"),
    Method("adalora", "AdaLoRA", {"method": "adalora"}, None,
           "Zhang et al. 2023, sections 3.1-3.3",
           "updates P diag(E) Q; the least important singular values are pruned until the ranks fit a budget"),
    Method("ia3", "IA3", {"method": "ia3"}, None,
           "Liu et al. 2022 (T-Few), section 3.3",
           "learned vectors rescale activations element-wise (the paper: keys, values, feed-forward; peft on Qwen2: the outputs of q_proj and v_proj and the input of down_proj)"),
    Method("prefix", "prefix tuning", {"method": "prefix"}, 1e-2,
           "Li & Liang 2021, sections 4.2-4.3",
           "keys and values of virtual tokens at every layer, produced by a trained MLP (reparameterisation)"),
    Method("ptuning_v2", "P-tuning v2", {"method": "ptuning_v2"}, 1e-2,
           "Liu et al. 2022 (P-Tuning v2), sections 3.2-3.3",
           "keys and values of virtual tokens at every layer, trained directly (no MLP)"),
    Method("prompt", "prompt tuning", {"method": "prompt"}, 3e-2,
           "Lester et al. 2021, section 2",
           "embeddings of virtual tokens prepended to the input only"),
]}


class MethodError(ConfigError):
    """A method comparison that cannot run; the message names the argument and the fix."""


def resolve(names) -> list[Method]:
    """Methods by name, in the order given; an unknown name fails with the list of known ones."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)
    if not names:
        raise MethodError(f"methods=[]: name at least one of {', '.join(METHODS)}.", field="methods")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise MethodError(f"methods: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(METHODS)}.",
                          field="methods")
    return [METHODS[n] for n in names]


def method_config(base: RunConfig, name: str, steps: int, output_dir: str | Path,
                  learning_rates: dict[str, float] | None = None) -> RunConfig:
    """`base` turned into method `name`, trained for exactly `steps` optimizer steps, no checkpoints.

    AdaLoRA's schedule (Zhang et al. 2023, section 3.3) is fitted into the steps: 10% warm-up at the
    initial rank, a cubic fall to the budget, and the last 20% (at least one step) at the final ranks,
    so the final allocation is really made (peft fixes it at step total - tfinal).
    """
    (method,) = resolve([name])
    rates = learning_rates or {}
    unknown = sorted(set(rates) - set(METHODS))
    if unknown:
        raise MethodError(f"learning_rates: unknown method(s) {', '.join(map(repr, unknown))}; keys are method names "
                          f"({', '.join(METHODS)}).", field="learning_rates")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise MethodError(f"steps={steps!r}: give a positive number of optimizer steps (every method gets "
                          "the same), e.g. 8 for a quick run, 64 for the case study's 8 epochs.", field="steps")
    if method.name == "adalora" and steps < 2:
        raise MethodError("steps=1: AdaLoRA needs at least 2 steps (one to score importance, one to allocate).",
                          field="steps")
    lr = rates.get(method.name, method.learning_rate) or base.learning_rate
    extra = {}
    if method.name == "adalora":
        tfinal = max(1, steps // 5)
        extra = dict(adalora_tinit=min(steps // 10, steps - tfinal - 1), adalora_tfinal=tfinal,
                     adalora_init_r=max(base.adalora_init_r, base.r))
    return with_overrides(base, **method.overrides, **extra, learning_rate=lr, max_steps=steps,
                          output_dir=str(Path(output_dir) / method.name), save_strategy="no",
                          eval_each_epoch=False)


def trainable_tensors(model, limit: int = 8) -> dict[str, list[int]] | int:
    """{name: shape} of the trainable tensors (what peft built), or just their number if there are many."""
    named = [(n, list(p.shape)) for n, p in model.named_parameters() if p.requires_grad]
    return dict(named) if len(named) <= limit else len(named)


def adalora_allocation(model, adapter_name: str = "default") -> dict:
    """AdaLoRA's final ranks as a layers x modules grid, read from peft's `rank_pattern`.

    peft does not shrink the matrices: a pruned triplet keeps its slot with its singular value E set to
    zero (`ranknum`, the scaling denominator, stays init_r). So the rank of a module is the number of
    True entries in its rank_pattern mask; `nonzero_E` counts the singular values still non-zero, which can
    only be fewer. The budget is target_r times the number of adapted modules (peft's `target_bgt`).
    """
    cfg = model.peft_config[adapter_name]
    pattern = cfg.rank_pattern
    if not pattern:
        raise ValueError("AdaLoRA has no rank_pattern: update_and_allocate never reached its final allocation "
                         "(train with peftlab.train, which calls it every step, and adalora_tfinal >= 1).")
    params = dict(model.named_parameters())
    cells: dict[tuple[int, str], tuple[int, int]] = {}
    for key, mask in pattern.items():  # key: the lora_E parameter's name, e.g. ...layers.3.self_attn.q_proj.lora_E.default
        module_name = re.sub(r"\.lora_E(\.[^.]+)?$", "", key)
        found = re.search(r"layers\.(\d+)\..*?([^.]+)$", module_name)
        if not found:
            raise ValueError(f"AdaLoRA rank_pattern key {key!r}: no layer number in it; cannot place it on the grid.")
        e = params.get(key, params.get(f"{module_name}.lora_E.{adapter_name}"))
        nonzero = int((e.detach() != 0).sum()) if e is not None else -1
        cells[(int(found.group(1)), found.group(2))] = (int(sum(bool(m) for m in mask)), nonzero)
    layers = sorted({layer for layer, _ in cells})
    order = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    modules = sorted({m for _, m in cells}, key=lambda m: (order.index(m) if m in order else len(order), m))
    ranks = [[cells.get((layer, m), (0, 0))[0] for m in modules] for layer in layers]
    nonzero = [[cells.get((layer, m), (0, 0))[1] for m in modules] for layer in layers]
    return {"layers": layers, "modules": modules, "ranks": ranks, "nonzero_E": nonzero,
            "init_r": cfg.init_r, "target_r": cfg.target_r, "budget": cfg.target_r * len(cells),
            "allocated": sum(map(sum, ranks)), "tinit": cfg.tinit, "tfinal": cfg.tfinal,
            "total_step": cfg.total_step}


def run_method(base: RunConfig, name: str, steps: int, output_dir: str | Path, n_generate: int | None = None,
               max_new_tokens: int = 40, learning_rates: dict[str, float] | None = None, tokenizer=None,
               progress: bool = True, write: bool = True) -> dict:
    """Train method `name` for `steps` steps on a fresh base, evaluate it, and write `<output_dir>/<name>.json`.

    Peak memory is the training phase's: on CUDA `max_memory_allocated`; on CPU the process's resident
    high-water mark, reset when training starts (so the loaded model is included, loading itself is not).
    In a process that ran other methods before, freed memory the allocator kept counts too: the bench
    runs each method in its own process for that reason.
    """
    (method,) = resolve([name])
    config = method_config(base, name, steps, output_dir, learning_rates)
    tokenizer = tokenizer or models.load_tokenizer(config.model_name)
    gc.collect()
    start = time.perf_counter()
    result = train.train(config, progress=progress, model=models.load_model(config), tokenizer=tokenizer)
    model = result.model
    counts = adapters.count_parameters(model)
    done = result.trainer.state.global_step
    loss = metrics.heldout_loss(model, result.eval_dataset, tokenizer)
    rows = result.eval_rows if n_generate is None else result.eval_rows[:n_generate]
    gens = metrics.generate(model, tokenizer, rows, max_new_tokens=max_new_tokens, batch_size=max(1, len(rows)),
                            system_prompt=config.system_prompt, progress=progress)
    refs = [r["output"] for r in rows]
    scores = metrics.bleu_chrf(gens, refs)
    gain = metrics.paired_gain(gens, metrics.copy_baseline(rows), refs)  # chrF minus copying the input's
    losses = [loss_ for _, loss_ in result.history.train]
    rec = make_record(
        config, kind="methods", method=name, label=method.label, paper=method.paper, changes=method.changes,
        trainable=counts.trainable, total=counts.total, trainable_percent=counts.percent,
        trainable_tensors=trainable_tensors(model),
        peak_bytes=result.peak.bytes, peak_source=result.peak.source, peak_start_bytes=result.peak.start_bytes,
        steps=done, train_wall_s=result.wall_s, step_s=result.wall_s / max(1, done),
        tokens_per_s=result.tokens_per_s, train_loss_first=losses[0] if losses else None,
        train_loss_last=losses[-1] if losses else None, train_losses=losses,
        heldout_loss=loss, perplexity=metrics.perplexity_from_loss(loss), chrf=scores["chrf"],
        bleu=scores["bleu"], chrf_gain_vs_copy=gain.score, chrf_gain_ci=gain.ci, heldout_rows=len(result.eval_dataset),
        style_share=metrics.style_share(gens), n_generate=len(rows),
        max_new_tokens=max_new_tokens, samples=[{"input": r["input"], "reference": r["output"], "output": g}
                                                for r, g in zip(rows, gens)],
        adalora=adalora_allocation(model) if config.method == "adalora" else None,
        wall_s=time.perf_counter() - start,
    )
    if write:
        write_record(rec, Path(output_dir) / f"{name}.json")
    del result, model
    gc.collect()
    return rec


def compare(base: RunConfig, names=tuple(METHODS), steps: int = 8, output_dir: str | Path = "runs/methods",
            n_generate: int | None = None, max_new_tokens: int = 40, learning_rates: dict[str, float] | None = None,
            progress: bool = True, log=print) -> list[dict]:
    """Run every method in `names` in this process (see `run_method`), one record each; returns the records."""
    from tqdm.auto import tqdm

    methods = resolve(names)
    for m in methods:
        method_config(base, m.name, steps, output_dir, learning_rates)  # every bad argument fails before training
    tokenizer = models.load_tokenizer(base.model_name)
    records = []
    for m in tqdm(methods, desc="methods", unit="method", disable=not progress):
        rec = run_method(base, m.name, steps, output_dir, n_generate, max_new_tokens, learning_rates, tokenizer,
                         progress=False)
        log(f"{m.label}: {rec['trainable']:,} trainable, {rec['step_s']:.2f} s/step, held-out perplexity "
            f"{rec['perplexity']:.2f}, chrF {rec['chrf']:.1f}, archaic share {rec['style_share']:.0%}")
        records.append(rec)
    return records


def read_records(folder: str | Path, names=tuple(METHODS)) -> list[dict]:
    """The records `run_method` wrote under `folder`, in METHODS order (missing methods skipped)."""
    from .record import read_record

    folder = Path(folder)
    out = [read_record(folder / f"{n}.json") for n in names if (folder / f"{n}.json").is_file()]
    if not out:
        raise FileNotFoundError(f"{folder}: no method records (<method>.json); run the comparison first.")
    return out


def paired_against(records: list[dict], reference: str = "lora") -> list[dict]:
    """chrF of each method minus the `reference` method's on the same sentences, with the 95% CI of that
    paired difference (bootstrap, `metrics.paired_gain`): a difference is beyond noise when |diff| > CI."""
    from . import metrics

    by = {r["method"]: r for r in records}
    if reference not in by:
        raise ValueError(f"reference={reference!r}: no such record; have {', '.join(by)}.")
    ref = by[reference]
    refs = [s["reference"] for s in ref["samples"]]
    out = []
    for r in records:
        if r["method"] == reference:
            continue
        if [s["reference"] for s in r["samples"]] != refs:
            raise ValueError(f"{r['method']} and {reference} were scored on different sentences; compare runs "
                             "with the same n_generate.")
        d = metrics.paired_gain([s["output"] for s in r["samples"]], [s["output"] for s in ref["samples"]], refs)
        out.append({"method": r["label"], f"chrF minus {ref['label']}": d.score, "95% CI": d.ci,
                    "beyond noise": abs(d.score) > d.ci})
    return out


def findings(records: list[dict], steps: int) -> dict:
    """What Session 4 concludes from `records`: the reference method (LoRA if it ran), the paired chrF
    differences against it, the winners (best chrF, lowest held-out perplexity, fewest trainable parameters,
    fastest step) and the sentences that say so (`lines`, one per finding)."""
    by = {r["method"]: r for r in records}
    reference = "lora" if "lora" in by else records[0]["method"]
    paired = paired_against(records, reference) if len(records) > 1 else []
    best_chrf = max(records, key=lambda r: r["chrf"])
    best_ppl = min(records, key=lambda r: r["perplexity"])
    fewest = min(records, key=lambda r: r["trainable"])
    fastest = min(records, key=lambda r: r["step_s"])
    lines = [f"At {steps} equal steps: best chrF {best_chrf['label']} ({best_chrf['chrf']:.1f}), lowest held-out "
             f"perplexity {best_ppl['label']} ({best_ppl['perplexity']:.2f}), fewest trainable parameters "
             f"{fewest['label']} ({fewest['trainable']:,}, {fewest['trainable_percent']:.4f}%), fastest step "
             f"{fastest['label']} ({fastest['step_s']:.2f} s)."]
    real = [p for p in paired if p["beyond noise"]]
    lines.append(f"Beyond noise against {by[reference]['label']}: "
                 + (", ".join(f"{p['method']} ({p[next(k for k in p if k.startswith('chrF'))]:+.1f})" for p in real)
                    if real else "none")
                 + f" of {len(paired)} methods, on {records[0]['n_generate']} sentences.")
    if "full" in by and reference in by:
        f, ref = by["full"], by[reference]
        lines.append(f"Full fine-tuning trains {f['trainable'] / ref['trainable']:.0f}x the parameters of "
                     f"{ref['label']} and peaked at {f['peak_bytes'] / 2**20:,.0f} MiB against "
                     f"{ref['peak_bytes'] / 2**20:,.0f} MiB ({f['step_s'] / ref['step_s']:.2f}x the step time).")
    prompt_like = [by[n] for n in ("prefix", "ptuning_v2", "prompt") if n in by]
    if prompt_like and reference in by:
        lines.append("Held-out perplexity of the prompt methods: "
                     + ", ".join(f"{r['label']} {r['perplexity']:.2f}" for r in prompt_like)
                     + f"; {by[reference]['label']}: {by[reference]['perplexity']:.2f}.")
    return {"by": by, "reference": reference, "paired": paired, "lines": lines,
            "best": {"chrF": best_chrf["label"], "perplexity": best_ppl["label"], "fewest parameters": fewest["label"],
                     "fastest step": fastest["label"]}}


# --------------------------------------------------------------- table and plots
COLUMNS = {"label": "method", "trainable": "trainable", "trainable_percent": "trainable %",
           "peak_mib": "peak MiB", "step_s": "s/step", "perplexity": "held-out ppl", "chrf": "chrF",
           "style_share": "archaic share"}


def table(records: list[dict]):
    """One row per record (pandas DataFrame), indexed by method label."""
    import pandas as pd

    if not records:
        raise ValueError("table needs at least one method record.")
    missing = sorted({k for r in records for k in ("label", "trainable", "perplexity", "chrf")} - set().union(*records))
    if missing:
        raise ValueError(f"records lack {', '.join(missing)}: are these records written by peftlab.methods?")
    rows = [{**{k: r.get(k) for k in COLUMNS if k != "peak_mib"}, "peak_mib": r["peak_bytes"] / 2**20}
            for r in records]
    return pd.DataFrame(rows)[list(COLUMNS)].rename(columns=COLUMNS).set_index("method")


def markdown_table(records: list[dict]) -> str:
    """The table as GitHub markdown, numbers rounded for reading."""
    df = table(records)
    lines = ["| method | trainable | trainable % | peak memory | s/step | held-out perplexity | chrF | archaic share |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, r in df.iterrows():
        lines.append(f"| {label} | {int(r['trainable']):,} | {r['trainable %']:.3f}% | {r['peak MiB']:,.0f} MiB | "
                     f"{r['s/step']:.2f} | {r['held-out ppl']:.2f} | {r['chrF']:.1f} | {r['archaic share']:.0%} |")
    return "\n".join(lines)


def plot_methods(records: list[dict], path: str | Path | None = None, title: str = "PEFT methods at equal steps"):
    """Quality against trainable parameters (log scale), and step time and peak memory per method."""
    from .plots import pyplot, save_figure

    df = table(records)
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, col, ylabel in ((axes[0], "chrF", "chrF (held-out)"), (axes[1], "held-out ppl", "held-out perplexity")):
        ax.scatter(df["trainable"], df[col])
        for label, r in df.iterrows():
            ax.annotate(label, (r["trainable"], r[col]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel(ylabel)
    axes[1].set_yscale("log")
    y = range(len(df))
    axes[2].barh(list(y), df["s/step"])
    axes[2].set_yticks(list(y), list(df.index), fontsize=8)
    axes[2].invert_yaxis()
    axes[2].set_xlabel("seconds per optimizer step")
    for i, mib in zip(y, df["peak MiB"]):
        axes[2].annotate(f"{mib:,.0f} MiB", (0, i), fontsize=7, xytext=(3, 0), textcoords="offset points",
                         va="center", color="white")
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_allocation(alloc: dict, path: str | Path | None = None):
    """AdaLoRA's final rank per layer (rows) and module (columns) as a heatmap, numbers in the cells."""
    from .plots import pyplot, save_figure

    plt = pyplot()
    ranks = alloc["ranks"]
    fig, ax = plt.subplots(figsize=(1.1 * len(alloc["modules"]) + 2, 0.28 * len(alloc["layers"]) + 1.6))
    image = ax.imshow(ranks, aspect="auto", cmap="viridis", vmin=0, vmax=alloc["init_r"])
    for i, row in enumerate(ranks):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v < alloc["init_r"] / 2 else "black")
    ax.set_xticks(range(len(alloc["modules"])), alloc["modules"], rotation=30, fontsize=8)
    ax.set_yticks(range(len(alloc["layers"])), [str(layer) for layer in alloc["layers"]], fontsize=7)
    ax.set_ylabel("layer")
    ax.set_title(f"AdaLoRA ranks: {alloc['allocated']} of budget {alloc['budget']} "
                 f"(uniform: {alloc['target_r']} each, start {alloc['init_r']})", fontsize=9)
    fig.colorbar(image, ax=ax, label="rank")
    return save_figure(fig, path)
