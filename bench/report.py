"""Write the README's "Performance" section from the benchmark records kept in bench/records/readme/.

    python bench/report.py [--collect runs/bench] [--bench bench/records/readme] [--readme README.md]

Replaces the text between the `performance:start` and `performance:end`
markers; every number in it comes from a record written by a bench script,
which also names the machine, commit and conditions. The methods comparison
(`bench/methods.py`) and the inference measurements (`bench/inference.py`) have
their own markers (`methods:start` ... `methods:end`, `inference:start` ...
`inference:end`); `--sections methods,inference` renders only those.

The records the README is rendered from are committed (bench/records/readme/, a few
hundred KB), so a reader can trace every number in these sections to its run, and
tests/test_prose.py renders the sections again and fails where the README differs.
`--collect runs/bench` first copies what `make bench` just wrote there over the kept
records: only the files a section reads, and only those the new run has.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

GiB = 2**30
START, END = "<!-- performance:start -->", "<!-- performance:end -->"
MARKERS = {"performance": (START, END), "methods": ("<!-- methods:start -->", "<!-- methods:end -->"),
           "inference": ("<!-- inference:start -->", "<!-- inference:end -->")}


ROOT = Path(__file__).resolve().parents[1]
KEPT = ROOT / "bench" / "records" / "readme"
# The files each section reads, relative to the bench folder ("*.json" under methods/: one per method).
READS = {"performance": ["memory/records.json", "memory/table.md", "throughput.json", "notebooks.json",
                         "grading.json", "smollm.json", "memory-cuda/records.json", "memory-cuda/table.md"],
         "methods": ["methods/*.json"],  # summary.json and one record per method
         "inference": ["inference/record.json"]}


def collect(source: Path, kept: Path = KEPT, sections=tuple(READS)) -> list[Path]:
    """Copy the records `sections` read from a fresh bench folder over the kept ones; return what was copied.
    A section whose new run left no record keeps the old one."""
    import shutil

    copied = []
    for name in sections:
        for pattern in READS[name]:
            for path in sorted(source.glob(pattern)):
                target = kept / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                copied.append(target)
    return copied


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def section(bench: Path) -> str:
    mem = _load(bench / "memory" / "records.json")
    thr = _load(bench / "throughput.json")
    nbs = _load(bench / "notebooks.json")
    grd = _load(bench / "grading.json")
    sml = _load(bench / "smollm.json")
    gpu = _load(bench / "memory-cuda" / "records.json")
    out = []
    if mem:
        hw, v, c = mem["hardware"], mem["versions"], mem["conditions"]
        commit = mem.get("commit") or "unknown"
        where = f"`{commit[:10]}`" + (" with uncommitted changes" if commit.endswith("-dirty") else "")
        out += [
            f"Measured by `make bench` at commit {where} on {hw['platform']}, "
            f"{mem['cpu_count']} CPU cores ({hw.get('cpu_kind', 'CPU kind not recorded')}), no GPU; torch {v.get('torch')}, transformers {v.get('transformers')}, "
            f"peft {v.get('peft')}, bitsandbytes {v.get('bitsandbytes')}.", "",
            "### Memory and speed of one training step",
            "",
            f"A Qwen2-shaped model of {mem['records'][0]['total'] / 1e6:.0f}M parameters built offline (12 layers, "
            f"hidden 768, the course tokenizer), {c['dtype']}, batch {c['batch']} x {c['seq_len']} tokens, "
            f"{c['steps']} AdamW steps; every configuration in its own process; peak = resident high-water mark "
            "during the training steps (model loading excluded, Python and libraries included); estimate = "
            "`peftlab.memory.estimate` from the config alone.", "",
            (bench / "memory" / "table.md").read_text().strip(), "",
        ]
        recs = {r["config"]: r for r in mem["records"]}
        worst = max(abs(r["error_pct"]) for r in mem["records"])
        out.append(f"Largest estimator error: {worst:.1f}% (target: within 15%). The runs set "
                   "`MALLOC_MMAP_THRESHOLD_=65536` so that glibc returns freed blocks to the system and the resident "
                   "peak tracks live memory, and copy the weights out of the checkpoint's memory map after loading.")
        if mem.get("default_malloc_lora16_peak_bytes") and "LoRA r=16 all linear" in recs:
            out.append(f"With glibc's default settings the LoRA r=16 run peaked at "
                       f"{mem['default_malloc_lora16_peak_bytes'] / GiB:.2f} GiB instead of "
                       f"{recs['LoRA r=16 all linear']['peak_bytes'] / GiB:.2f} GiB: freed memory kept by the heap, "
                       "which a CPU user sees too.")
        full = recs.get("full fine-tuning")
        lora = recs.get("LoRA r=8 q+v")
        qlora = recs.get("QLoRA NF4+DQ r=16 all linear")
        # The predictions of the newer estimator where a GPU record has them (they are code, not measurements).
        predicted = (gpu or mem)["predictions"]
        pred7 = next((p for p in predicted if "7B" in p["model"]), None)
        if full and lora:
            out += ["", f"Full fine-tuning needs {full['peak_bytes'] / lora['peak_bytes']:.1f}x the peak memory of LoRA "
                    "r=8 on q+v here. The LoRA paper reports 3x for GPT-3 175B (1.2 TB to 350 GB, Hu et al. 2021, "
                    "section 4.2). The ratio grows with model size: gradients and AdamW states grow with the "
                    "parameters (h^2 per layer), activations and runtime, which both pay, only with h"
                    + (f"; the estimator predicts {pred7['full'] / pred7['LoRA r=16 all']:.1f}x for Qwen2.5-7B "
                       "against LoRA r=16 on all linear layers (table below)." if pred7 else ".")]
        lora16 = recs.get("LoRA r=16 all linear")
        if qlora and lora16:
            out += [f"QLoRA with the same adapter as LoRA r=16 peaked at {qlora['peak_bytes'] / GiB:.2f} GiB against "
                    f"{lora16['peak_bytes'] / GiB:.2f} GiB ({(lora16['peak_bytes'] - qlora['peak_bytes']) / GiB:.2f} GiB "
                    "less) and took "
                    f"{qlora['step_s'] / lora16['step_s']:.2f}x its step time on this CPU (the 4-bit weights are "
                    "dequantized at every use). QLoRA reports a 65B model going from more than 780 GB to under "
                    "48 GB of GPU memory (Dettmers et al. 2023, abstract)."]
        out += ["", "Bytes per parameter of the weights' training state, in theory:", "",
                "| setting | bytes/param | breakdown |", "|---|---:|---|"]
        out += [f"| {a} | {b} | {c_} |" for a, b, c_ in mem["theory"]]
        if all("state_bytes_per_param" in r for r in mem["records"]):
            out += ["", "and measured on the tensors after the last optimizer step (weights with their 4-bit "
                    "quantization state, gradients, AdamW moments, divided by all parameters; the frozen base "
                    "linear layers alone in the last column):", "",
                    "| configuration | training state, bytes/param | frozen base linears, bytes/weight |", "|---|---:|---:|"]
            for r in mem["records"]:
                base = r["base_linear_bytes_per_param"]
                out.append(f"| {r['config']} | {r['state_bytes_per_param']:.2f} | "
                           f"{'-' if base != base else f'{base:.3f}'} |")
        if gpu:
            out += [""] + gpu_memory_section(gpu, (bench / "memory-cuda" / "table.md").read_text())
        out += ["", "The estimator's training peaks for Qwen2.5 on a GPU (bf16, batch 4 x 512 tokens, no "
                "gradient checkpointing; full fine-tuning in pure bf16, 8 bytes per parameter: mixed precision's "
                "fp32 master weights would add 4, as the first table says), before anything is downloaded"
                + (f" (computed by the GPU run's commit `{gpu['commit'][:10]}`)" if gpu else "") + ":", "",
                "| model | full fine-tuning | LoRA r=16 all linear | QLoRA r=16 all linear |", "|---|---:|---:|---:|"]
        for row in predicted:
            out.append(f"| {row['model']} | {row['full'] / GiB:.1f} GiB | {row['LoRA r=16 all'] / GiB:.1f} GiB "
                       f"| {row['QLoRA r=16 all'] / GiB:.1f} GiB |")
        out.append("")
    if thr:
        res = thr["results"]
        out += ["### Training throughput", "",
                "The course pipeline (dynamic padding, length-grouped batches) against a plain Trainer + PEFT "
                "baseline that pads every example to max_length, same model, data and seed "
                f"(`bench/throughput.py`, tiny model, CPU of kind {thr['hardware'].get('cpu_kind', 'not recorded')}, "
                f"{_at(thr.get('git_commit'))}):", "",
                "| pipeline | real tokens/s |", "|---|---:|"]
        out += [f"| {name} | {r['tokens_per_s']:,.0f} |" for name, r in res.items()]
        out += ["", f"Speed-up: {thr['ratio']:.2f}x.", ""]
    if nbs:
        out += ["### The course's own run times", "",
                f"Each notebook headless with papermill on the tiny model, CPU of kind "
                f"{nbs['hardware'].get('cpu_kind', 'not recorded')}, {nbs['cpu_count']} cores (`bench/notebooks.py`, "
                f"{_at(nbs.get('commit'))}"
                + (f", load average {nbs['load_average_at_start'][0]:.1f} at the start" if "load_average_at_start" in nbs
                   else "") + "):", "", "| notebook | seconds |", "|---|---:|"]
        out += [f"| `{r['notebook']}` | {r['seconds']:.1f} |" for r in nbs["notebooks"]]
        out += [f"| total | {nbs['total_s']:.1f} |", ""]
    if grd:
        out += grading_section(grd)
    if sml:
        out += smollm_section(sml)
    if not out:
        return "No benchmark records yet: run `make bench`."
    return "\n".join(out).strip()


def _dtype(asked: str, hardware: dict) -> str:
    """The weights' dtype of a CPU run: `auto` resolved as `peftlab.devices.resolve_dtype` does on that CPU."""
    if asked != "auto" or "cpu_bf16_native" not in hardware:
        return asked
    return ("bfloat16" if hardware["cpu_bf16_native"] else "float32") + f" (`auto` on a CPU of kind {hardware['cpu_kind']})"


def _at(commit: str | None) -> str:
    """'commit `abc1234567`' (with uncommitted changes where the run's tree had them)."""
    if not commit:
        return "commit not recorded"
    return f"commit `{commit[:10]}`" + (" with uncommitted changes" if commit.endswith("-dirty") else "")


def gpu_memory_section(gpu: dict, table: str) -> list[str]:
    """The memory benchmark on a GPU (its record and its table.md): the estimator against `max_memory_allocated`."""
    hw, v, c = gpu["hardware"], gpu["versions"], gpu["conditions"]
    commit = gpu.get("commit") or "unknown"
    where = f"`{commit[:10]}`" + (" with uncommitted changes" if commit.endswith("-dirty") else "")
    recs = {r["config"]: r for r in gpu["records"]}
    worst = max(abs(r["error_pct"]) for r in gpu["records"])
    out = ["### Memory of one training step on a GPU", "",
           f"`{gpu.get('command', 'python bench/memory.py --device cuda')}` at commit {where} on an "
           f"{hw.get('gpu', 'unknown GPU')} ({hw.get('gpu_memory_gib', 0):.0f} GiB); torch {v.get('torch')}, "
           f"transformers {v.get('transformers')}, peft {v.get('peft')}, bitsandbytes {v.get('bitsandbytes')}. "
           f"The same {gpu['records'][0]['total'] / 1e6:.0f}M-parameter model, {c['dtype']} (QLoRA: NF4 weights, "
           f"bfloat16 compute), batch {c['batch']} x {c['seq_len']} tokens, {c['steps']} AdamW steps, LoRA dropout "
           "0; peak = `torch.cuda.max_memory_allocated` over the training steps (tensors only: the CUDA context "
           "and the allocator's cached blocks are outside it, as they are outside the estimate).", "",
           table.strip()]
    out += ["", f"Largest estimator error: {worst:.1f}% (target: within 15%)."]
    qlora, lora16 = recs.get("QLoRA NF4+DQ r=16 all linear"), recs.get("LoRA r=16 all linear")
    if qlora and lora16:
        q, lo = qlora["estimate"], lora16["estimate"]
        more = qlora["peak_bytes"] > lora16["peak_bytes"]
        out.append(
            f"Here QLoRA needs {'**more**' if more else 'less'} memory than bf16 LoRA with the same adapter: "
            f"{qlora['peak_bytes'] / GiB:.2f} against {lora16['peak_bytes'] / GiB:.2f} GiB. Its weights are smaller "
            f"({q['base_weights'] / GiB:.2f} against {lo['base_weights'] / GiB:.2f} GiB estimated), but peft's `prepare_model_for_kbit_training` "
            "casts the embeddings and norms to fp32, so the residual stream and every activation are fp32 "
            "(bitsandbytes returns each 4-bit layer's output in its input's dtype), and on CUDA fp32 attention "
            "with grouped KV heads runs PyTorch's math kernel, which keeps the softmax probabilities "
            f"(estimated activations {q['activations'] / GiB:.2f} against {lo['activations'] / GiB:.2f} GiB). "
            "QLoRA saves memory where the weights dominate: large models, short sequences, small batches, and "
            "gradient checkpointing, which `prepare_model_for_kbit_training` turns on by default "
            "(`gradient_checkpointing` in the course's config).")
    return out


def grading_section(grd: dict) -> list[str]:
    """bench/grading.py's record: plain nbgrader against peftlab-grade, the targets, where the time goes."""
    seq, par = grd["runs"]["sequential"], grd["runs"]["parallel"]
    out = ["### Grading", "",
           f"{grd['n']} submissions of `{grd['assignment']}`, sandboxed (`bench/grading.py`, {_at(grd.get('commit'))}): "
           f"{seq['per_minute']:.1f} submissions/min with 1 worker, {par['per_minute']:.1f} with "
           f"{par['workers']} ({grd['ratio']:.2f}x); grades identical: {'yes' if grd['identical'] else 'NO'}. "
           f"At the parallel rate a class of 100 takes about {100 / par['per_minute']:.0f} minutes on this "
           "machine.", ""]
    plain = grd["runs"].get("plain")
    if plain and "one_worker_vs_plain_time" in grd:
        busy = grd.get("busy_cores_before")
        shared = grd["load_average"]["shared"]
        one, thr = grd["one_worker_vs_plain_time"], grd["all_workers_vs_plain_throughput"]
        out += [f"Against plain `nbgrader autograde` on the same submissions ({grd['hardware']['cpu_count']} cores, "
                + (f"{busy} cores busy with other work at the start" if busy is not None
                   else f"load average {grd['load_average']['before'][0]:.1f} at the start")
                + (": a shared machine" if shared else ": an idle machine") + "):", "",
                "| run | time | against plain nbgrader | target |", "|---|---:|---|---|",
                f"| plain nbgrader, sequential | {plain['seconds']:.1f} s | | |",
                f"| `peftlab-grade`, 1 worker | {seq['seconds']:.1f} s | {one:.2f}x the time | at most 1.25x: "
                f"{'met' if one <= 1.25 else 'NOT met'} |",
                f"| `peftlab-grade`, {par['workers']} workers | {par['seconds']:.1f} s | {thr:.2f}x the throughput | "
                f"at least 1.6x: {'met' if thr >= 1.6 else 'NOT met'} |", ""]
        if "setup_seconds" in seq:
            if "solution_seconds" in seq:
                out += [f"Once per class, not counted above: {seq['setup_seconds']:.1f} s to build the scratch course "
                        "and gradebook and start the worker server, and "
                        f"{seq['solution_seconds']:.1f} s to run the solution through the probes for the class's "
                        f"{grd['n']} seeds (one run of its notebook answers up to 64; cached for reruns of the class).",
                        ""]
            else:
                out += [f"Once per class, not counted above: {seq['setup_seconds']:.1f} s to build the scratch "
                        "course and gradebook, start the worker server and run the solution through the probes "
                        "(cached for reruns of the class).", ""]
        prof = seq.get("profile") or {}
        if prof:
            names = {"worker_start": "worker start and recording" if "record" not in prof else
                     "forking the worker, its start and exit", "check": "checks",
                     "copy": "the scratch course copied and nbgrader's API made", "kernel_start": "kernel start",
                     "cells": "the notebook's cells", "canaries": "canaries", "probes": "probes",
                     "kernel_stop": "kernel stop", "nbgrader_other": "nbgrader's own work",
                     "read": "grades and the probes' verdicts read", "feedback": "feedback",
                     "record": "the batch recording it"}
            out += ["Where one submission's time goes (1 worker, mean seconds): "
                    + ", ".join(f"{names.get(k, k)} {v:.2f}" for k, v in prof.items() if v >= 0.005) + ".", ""]
    return out


def smollm_section(sml: dict) -> list[str]:
    """The case study on SmolLM2-135M (bench/smollm.py): targets, quality against copying, forgetting."""
    from peftlab.casestudy import beats_copying, estimator_error, verdict

    rec = sml["demo"]["record"]
    c, cond = rec["config"], sml["conditions"]
    q = {t["system"]: t for t in rec["quality"]}
    step_shape = " x ".join(map(str, rec["step_batch_shape"])) + " tokens"
    b, a = rec["before"], rec["after"]
    full_commit = sml.get("commit") or "unknown"
    commit = full_commit[:10] + ("` with uncommitted changes" if full_commit.endswith("-dirty") else "`")
    nb = sml.get("notebook")
    out = ["### The case study on a real model, CPU", "",
           f"`make demo` on SmolLM2-135M-Instruct (preset `shakespeare-cpu`: {c['method']} r={c['r']}, "
           f"alpha={c['lora_alpha']:g} on {', '.join(c['target_modules']) if isinstance(c['target_modules'], list) else c['target_modules']}, "
           f"dropout {c['lora_dropout']:g}, lr {c['learning_rate']:g}, {c['num_train_epochs']:g} epochs, "
           f"batch {c['per_device_train_batch_size']} x "
           f"{c['gradient_accumulation_steps']}, {c['dtype']}; {_pairs(rec['data']['train']['examples'], rec['data']['eval']['examples'])}), "
           f"measured by `bench/smollm.py` at commit `{commit}, on a CPU of kind "
           f"{cond.get('cpu_kind', 'not recorded')}"
           + (" (held to AVX2 by `--simulate-avx2`)" if cond.get("simulated_avx2") else "")
           + f", {cond.get('dtype', c['dtype'])}, {sml['cpu_count']} CPU cores, {cond['torch_threads']} torch thread(s), load average "
           f"{cond['load_average_at_start'][0]:.1f} at start and {cond['load_average_at_end'][0]:.1f} at the end "
           + ("(a shared machine: the times are upper bounds)." if cond["load_average_at_start"][0] > sml["cpu_count"]
              else "(otherwise idle)."), "",
           "| target | measured |", "|---|---:|",
           f"| `make demo` wall time (model cache built), <= 6 min | {sml['demo']['wall_s'] / 60:.1f} min "
           f"({sml['demo'].get('wall_source', 'around the command')}) |"]
    if nb:
        out.append(f"| Session 2 notebook via papermill, <= 8 min | {nb['wall_s'] / 60:.1f} min |")
    gain = q["trained"]
    out += [f"| trained chrF minus copy-the-input chrF, > the 95% CI of that paired difference | "
            f"{gain['chrF gain']:+.1f} +- {gain['chrF gain 95% CI']:.1f} (paired bootstrap p = {gain['chrF p vs copy']:.3f}) |",
            f"| held-out outputs with an archaic form, >= 40% | {q['trained']['archaic share']:.0%} |",
            f"| estimator vs the measured tensor peak of a training step ({step_shape}), within 15% | "
            f"{rec['estimated_peak_bytes'] / GiB:.2f} vs {rec['step_peak_bytes'] / GiB:.2f} GiB "
            f"({100 * estimator_error(rec):+.1f}%) |",
            "", f"The tensor peak is measured on one forward and backward pass over the longest training batch "
            f"({rec['step_peak_source']}; `torch.cuda.max_memory_allocated` counts the same on a GPU). The "
            f"process's resident peak over all of training was {rec['peak_memory_bytes'] / GiB:.2f} GiB: on top of "
            "the tensors it holds Python, the libraries and freed memory that glibc keeps for reuse.",
            "", "| system | BLEU | chrF | chrF gain vs copy | archaic share |", "|---|---:|---:|---:|---:|"]
    for t in rec["quality"]:
        g = "" if t["system"] == "copy the input" else f"{t['chrF gain']:+.1f} +- {t['chrF gain 95% CI']:.1f}"
        out.append(f"| {t['system']} | {t['BLEU']:.1f} +- {t['BLEU 95% CI']:.1f} | {t['chrF']:.1f} +- "
                   f"{t['chrF 95% CI']:.1f} | {g} | {t['archaic share']:.0%} |")
    out += ["", f"Held-out perplexity {b['perplexity']:.2f} +- {b['perplexity_ci']:.2f} before, {a['perplexity']:.2f} +- "
            f"{a['perplexity_ci']:.2f} after; training loss per epoch "
            + ", ".join(f"{v:.3f}" for _, v in rec["epoch_mean_loss"]) + ". Forgetting: general questions the base "
            f"answers correctly, {b['knowledge_accuracy']:.0%} before and {a['knowledge_accuracy']:.0%} after; "
            f"perplexity of general modern prose {b['general_text_perplexity']:.2f} before, "
            f"{a['general_text_perplexity']:.2f} after. {rec['steps']} optimizer steps in {rec['train_wall_s']:.0f} s.", ""]

    missed = [name for name, ok in [
        ("demo time", sml["demo"]["wall_s"] <= 360),
        ("notebook time", nb is None or nb["wall_s"] <= 480),
        ("chrF gain over copying beyond its CI", beats_copying(q["trained"])),
        ("archaic share", q["trained"]["archaic share"] >= 0.4),
        ("estimator within 15%", abs(estimator_error(rec)) <= 0.15),
    ] if not ok]
    out += [f"Reading: {verdict(rec['quality'])} "
            + (f"Targets not met in this run: {', '.join(missed)}." if missed else "All targets met in this run."), ""]
    if sml.get("sweep"):
        out += sweep_section(sml, demo_data=(rec["data"]["train"]["examples"], rec["data"]["eval"]["examples"]))
    return out


def _pairs(train: int, held_out: int) -> str:
    return f"{train} training and {held_out} held-out pairs"


def sweep_section(sml: dict, demo_data: tuple[int, int] | None = None) -> list[str]:
    """The recipes around the case study's preset (bench/smollm.py --only-sweep, or --sweep-record)."""
    sc = sml.get("sweep_conditions", sml["conditions"])
    sweep_commit = sc.get("commit", sml.get("commit") or "unknown")
    data = sml.get("sweep_data")
    where = (f"at commit `{sweep_commit[:10]}`" + (" with uncommitted changes" if sweep_commit.endswith("-dirty") else "")
             + f", load average {sc['load_average_at_start'][0]:.1f} at start"
             + (f" and {sc['load_average_at_end'][0]:.1f} at the end" if sc.get("load_average_at_end") else ""))
    # Another process at the start; the load at the end counts the sweep's own threads too.
    shared = sc["load_average_at_start"][0] > sml["cpu_count"]
    out = ["Recipes around the preset (trained model only, same seed"
           + (f", {_pairs(data['train'], data['test'])}" if data else ", same data") + f"; {where}"
           + ("; the machine was shared, so training times and seconds per step are upper bounds" if shared else "")
           + "). Each change is relative to the preset that was current then; the gain is chrF minus copying's "
           "(whose chrF is the same in every row), and a recipe beats copying beyond noise when the gain exceeds "
           "its 95% CI:", ""]
    if data and demo_data and tuple(demo_data) != (data["train"], data["test"]):
        out[0] = (f"The demo above ran on {_pairs(*demo_data)}; the recipes below on {_pairs(data['train'], data['test'])}, "
                  "so the two tables are not comparable until the demo is measured again on the current data "
                  "(`make bench`). " + out[0])
    out += ["| change | chrF | gain vs copy | p vs copy | archaic share | steps | training s | s/step |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sml["sweep"]:
        change = r["change"] if isinstance(r["change"], str) else ", ".join(f"{k}={v}" for k, v in r["change"].items())
        gain = (f"{r['gain']:+.1f} +- {r['gain_ci']:.1f}" if "gain_ci" in r else f"{r['chrF'] - r['copy_chrF']:+.1f}")
        steps = r.get("steps")
        per_step = f"{r['train_s'] / steps:.2f}" if steps else ""
        out.append(f"| {change} | {r['chrF']:.1f} +- {r['chrF_ci']:.1f} | {gain} | "
                   f"{r['p_vs_copy']:.3f} | {r['archaic_share']:.0%} | {steps or ''} | {r['train_s']:.0f} | {per_step} |")
    out.append("")
    return out


def methods_section(bench: Path) -> str:
    """The PEFT methods at equal steps (bench/methods.py): conditions, the table, AdaLoRA's allocation."""
    folder = bench / "methods"
    summary = _load(folder / "summary.json")
    if not summary:
        return "No method records yet: run `python bench/methods.py`."
    from peftlab.methods import markdown_table, paired_against, read_records

    records = read_records(folder, summary["methods"])
    v, cond = summary["versions"], summary
    commit = summary.get("commit") or "unknown"
    where = f"`{commit[:10]}`" + (" with uncommitted changes" if commit.endswith("-dirty") else "")
    shared = max(cond["load_average_at_start"][0], cond["load_average_at_end"][0]) > summary["cpu_count"]
    rec0 = records[0]
    c = rec0["config"]
    lrs = ", ".join(f"{r['label']} {r['config']['learning_rate']:g}" for r in records)
    out = ["### PEFT methods at equal steps", "",
           f"`{summary.get('command', 'python bench/methods.py').strip()}` at commit "
           f"{where}: {len(records)} methods on {summary['model']} ({summary['device']}, {summary['dtype']}), "
           f"{summary['steps']} optimizer steps each (batch {c['per_device_train_batch_size']} x "
           f"{c['gradient_accumulation_steps']}), seed {c['seed']}, the Shakespeare pairs; LoRA-family r={c['r']}, "
           f"alpha={c['lora_alpha']:g} on {c['target_modules'] if isinstance(c['target_modules'], str) else ', '.join(c['target_modules'])}; "
           f"{c['num_virtual_tokens']} virtual tokens for the prompt methods; learning rates: {lrs}. "
           f"Each method in its own process; peak = {rec0['peak_source']} during training (the loaded model "
           f"included, loading excluded); s/step = training wall time / steps; perplexity on the "
           f"{rec0.get('heldout_rows', 24)} held-out pairs; chrF and archaic share of greedy outputs on "
           f"{summary['n_generate']} of them ({summary['max_new_tokens']} new tokens at most). "
           f"{summary['cpu_count']} CPU cores, {summary['torch_threads']} torch threads, load average "
           f"{cond['load_average_at_start'][0]:.1f} at start and {cond['load_average_at_end'][0]:.1f} at the end"
           + (" (a shared machine: times are upper bounds)" if shared else "") + f"; torch {v.get('torch')}, "
           f"transformers {v.get('transformers')}, peft {v.get('peft')}; {summary['wall_s'] / 60:.0f} min in all.", "",
           markdown_table(records), ""]
    by = {r["method"]: r for r in records}
    best = max(records, key=lambda r: r["chrf"])
    lowest = min(records, key=lambda r: r["perplexity"])
    out.append(f"Best chrF here: {best['label']} ({best['chrf']:.1f}); lowest held-out perplexity: "
               f"{lowest['label']} ({lowest['perplexity']:.2f}); copying the input unchanged scores chrF "
               f"{best['chrf'] - best['chrf_gain_vs_copy']:.1f} on the same sentences.")
    if "lora" in by and len(records) > 1:
        paired = paired_against(records, "lora")
        key = next(k for k in paired[0] if k.startswith("chrF minus"))
        real = [p for p in paired if p["beyond noise"]]
        out.append("chrF against LoRA's on the same sentences, with the 95% interval of the paired difference "
                   "(bootstrap): " + "; ".join(f"{p['method']} {p[key]:+.1f} +- {p['95% CI']:.1f}" for p in paired)
                   + ". Beyond noise: " + (", ".join(p["method"] for p in real) if real else "none") + ". One seed, "
                   "and each method's learning rate set once, not tuned: a ranking, not a verdict.")
    for r in records:
        losses = r.get("train_losses") or []
        if losses and r["train_loss_last"] > r["train_loss_first"]:
            peak = max(range(len(losses)), key=losses.__getitem__)
            sample = next((s.get("output") for s in r.get("samples", []) if isinstance(s, dict) and s.get("output")), None)
            label = r["label"][0].upper() + r["label"][1:]
            out.append(f"{label} diverged: its training loss rose from {r['train_loss_first']:.2f} to "
                       f"{losses[peak]:.2f} at step {peak + 1} (learning rate {r['config']['learning_rate']:g}) and "
                       f"ended at {r['train_loss_last']:.2f}, above where it started"
                       + (f"; its first held-out output is \"{sample}\"" if sample else "")
                       + f". Its archaic share of {r['style_share']:.0%} is then no sign of style: read a style "
                       "measure beside chrF or perplexity.")
    ada = by.get("adalora", {}).get("adalora")
    if ada:
        per_module = {m: sum(row[j] for row in ada["ranks"]) for j, m in enumerate(ada["modules"])}
        out.append(f"AdaLoRA kept {ada['allocated']} ranks of its budget of {ada['budget']} "
                   f"({ada['target_r']} per module on average, from {ada['init_r']}); per module type, summed over "
                   f"{len(ada['layers'])} layers: " + ", ".join(f"{m} {n}" for m, n in per_module.items()) + ".")
    out.append("")
    return "\n".join(out).strip()


def inference_section(bench: Path) -> str:
    """Serving speed and memory on one model (bench/inference.py's record)."""
    rec = _load(bench / "inference" / "record.json")
    if not rec:
        return "No inference record yet: run `python bench/inference.py`."
    c, cond, v = rec["config"], rec["conditions"], rec["versions"]
    commit = rec.get("git_commit") or "unknown"
    where = f"`{commit[:10]}`" + (" with uncommitted changes" if commit.endswith("-dirty") else "")
    busy = cond["load_average_start"][0] > cond["cpu_count"]
    adapters = rec["adapters"] if isinstance(rec["adapters"], str) else "trained, " + ", ".join(rec["adapters"])
    targets = c["target_modules"] if isinstance(c["target_modules"], str) else ", ".join(c["target_modules"])
    first = rec["speed"][0]
    out = [f"Measured by `python bench/inference.py` at commit {where} on {rec['hardware']['platform']}, "
           f"{cond['cpu_count']} CPU cores, {cond['torch_threads']} torch thread(s), load average "
           f"{cond['load_average_start'][0]:.1f} at start and {cond['load_average_end'][0]:.1f} at the end "
           + ("(a shared machine: the times are upper bounds)" if busy else "(otherwise idle)")
           + f"; torch {v.get('torch')}, transformers {v.get('transformers')}, peft {v.get('peft')}, "
           f"bitsandbytes {v.get('bitsandbytes')}. Model `{c['model_name']}` in {_dtype(c['dtype'], rec['hardware'])} with "
           f"{len(rec['adapter_names'])} LoRA adapters r={c['r']} on {targets} ({adapters}). Greedy, "
           f"{first['prompt_tokens']}-token prompts, exactly {first['new_tokens']} new tokens per row, one warm-up, "
           f"median of {first['repeats']} runs (min-max); tokens/s counts the whole generate call.", "",
           "| variant | KV cache | batch | tokens/s (min-max) | first token ms | per token ms |",
           "|---|---|---:|---:|---:|---:|"]
    for r in sorted(rec["speed"], key=lambda r: (not r["use_cache"], r["variant"], r["batch_size"])):
        t = r["tokens_per_s"]
        out.append(f"| {r['variant']} | {'on' if r['use_cache'] else 'off'} | {r['batch_size']} | "
                   f"{t['median']:.1f} ({t['min']:.1f}-{t['max']:.1f}) | {r['first_token_ms']['median']:.0f} | "
                   f"{r['per_token_ms']['median']:.0f} |")
    ups = [u for u in rec["speedups"] if u["use_cache"]]
    for name, what in (("merged", "Merged against unmerged"), ("mixed", "A mixed batch (one adapter per row) against one adapter")):
        row = sorted((u["batch_size"], u["speed-up vs unmerged"]) for u in ups if u["variant"] == name)
        if row:
            out += ["", f"{what}, tokens/s ratio by batch size (KV cache on): "
                    + ", ".join(f"{b}: {x:.2f}x" for b, x in row) + "."]
    cc = rec["cache_curve"]
    out += ["", f"KV cache, batch {cc['batch_size']}, {cc['new_tokens']} new tokens after {cc['prompt_tokens']}: "
            f"{cc['on']['total_s']:.2f} s with it, {cc['off']['total_s']:.2f} s without; the gap between tokens goes "
            f"from {cc['on']['gap_ms'][0]:.0f} to {cc['on']['gap_ms'][-1]:.0f} ms with it and from "
            f"{cc['off']['gap_ms'][0]:.0f} to {cc['off']['gap_ms'][-1]:.0f} ms without."]
    rt = rec["merge_roundtrip"]
    out += ["", f"Merge + unmerge ({len(rt[0]['rounds'])} rounds) of an update {rt[0]['delta_relative_norm']:.2%} the size "
            "of the weights: " + "; ".join(
                f"{r['dtype']}: max |W - W0| {r['max_abs_weight_error']:.1e} (largest |W0| {r['max_abs_w0']:.2f}), "
                f"logits moved by up to {r['max_logit_change']:.1e} (largest {r['max_abs_logit']:.0f})" for r in rt) + "."]
    out += ["", "Weights and process peak by format, each in a fresh process (resident memory on a CPU, Python and "
            "libraries included):", "",
            "| weights | weights MiB | predicted MiB | before loading MiB | process peak MiB | tokens/s |",
            "|---|---:|---:|---:|---:|---:|"]
    for m in rec["memory"]:
        if "skipped" in m:
            out.append(f"| {m['format']} | not measured: {m['skipped']} | | | | |")
            continue
        out.append(f"| {m['format']} | {m['weights_bytes'] / 2**20:.1f} | {m['predicted_weights_bytes'] / 2**20:.1f} | "
                   f"{m['before_load_bytes'] / 2**20:.0f} | {m['process_peak_bytes'] / 2**20:.0f} | "
                   f"{m['tokens_per_s']:.1f} (batch {m['batch_size']}) |")
    p0 = rec["gpu_prediction"][0]
    out += ["", f"**Predicted, not measured**: serving Qwen2.5 on a GPU (`peftlab.memory` estimator; bf16 KV cache for "
            f"{p0['batch_size']} x {p0['tokens']} tokens; CUDA context and activations on top):", "",
            "| model | bf16 weights | NF4 weights | KV cache |", "|---|---:|---:|---:|"]
    out += [f"| {p['model']} | {p['bf16_weights_bytes'] / GiB:.2f} GiB | {p['nf4_weights_bytes'] / GiB:.2f} GiB | "
            f"{p['kv_cache_bytes'] / GiB:.2f} GiB |" for p in rec["gpu_prediction"]]
    return "\n".join(out).strip()


SECTIONS = {"performance": section, "methods": methods_section, "inference": inference_section}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench", default=str(KEPT), help="where the records are (default: the committed ones)")
    parser.add_argument("--collect", default=None, metavar="DIR",
                        help="first copy the records a section reads from DIR (e.g. runs/bench) into bench/records/readme")
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--sections", default=None,
                        help=f"comma-separated, of {', '.join(MARKERS)}; default: every one whose markers the README has")
    args = parser.parse_args(argv)
    readme = Path(args.readme)
    text = readme.read_text()
    present = [name for name, (start, end) in MARKERS.items() if start in text and end in text]
    wanted = present if args.sections is None else [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in MARKERS]
    if unknown:
        parser.error(f"--sections: unknown {unknown}; choose from {', '.join(MARKERS)}")
    missing = [s for s in wanted if s not in present] or ([] if wanted else ["performance"])
    if missing:
        print(f"{readme}: no " + "; ".join(f"{MARKERS[s][0]} ... {MARKERS[s][1]}" for s in missing) + " markers",
              file=sys.stderr)
        return 1
    if args.collect:
        for path in collect(Path(args.collect), Path(args.bench), sections=wanted):
            print(f"kept {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", file=sys.stderr)
    for name in wanted:
        start, end = MARKERS[name]
        body = SECTIONS[name](Path(args.bench))
        block = f"{start}\n{body}\n{end}"
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda m, block=block: block, text, flags=re.S)
        print(body)
    readme.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
