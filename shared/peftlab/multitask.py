"""Several LoRA adapters on one base: train, serve (switch, mixed batch), compose.

Session 3 in code. Three tasks share one frozen base model; each gets its own
LoRA adapter of the same rank and targets, so all three can sit on the base at
once (a few MiB each) and be

- switched: `set_adapter(name)` flips which adapter's A, B the LoRA layers use;
  no weight is copied or moved (the session measures what a switch costs);
- mixed in one batch: `generate(..., adapter_names=[...])` routes each row
  through its own adapter (peft runs every adapter on its sub-batch, per layer);
- composed: `add_weighted_adapter` builds a new adapter from weighted old ones.

On composition. Each adapter i adds delta_i = s_i * B_i @ A_i to a weight
(s_i = alpha / r). The target of a weighted combination is sum_i w_i * delta_i.
peft's 'cat' stacks the factors, A = [w_1 s_1 A_1; w_2 s_2 A_2] and B = [B_1, B_2],
so B @ A = sum_i w_i s_i B_i A_i exactly, at rank r_1 + r_2. 'linear' keeps rank r
and *adds the factors*: A = sum_i sqrt(w_i s_i) A_i, B = sum_i sqrt(w_i s_i) B_i, so
B @ A holds the cross terms sqrt(w_i s_i w_j s_j) B_i A_j as well: exact only
when one adapter has all the weight. 'svd' forms sum_i w_i delta_i exactly and
truncates it to rank max(r_i) by SVD (Eckart-Young: the best rank-r
approximation). TIES and DARE (Yadav et al. 2023; Yu et al. 2024) prune and
re-sign the factors on purpose; their difference from the weighted sum is the
method, not an error. `delta_error` measures all of them the same way.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import adapters, data, metrics, models, style, train
from .config import RunConfig, with_overrides
from .files import package_file


@dataclass(frozen=True)
class Task:
    """One task of the multi-task session: its data (package files), style measure and epochs."""

    name: str  # also the adapter's name on the shared base
    train_file: str
    test_file: str
    measure_name: str
    measure: Callable[[list[str]], float]  # share (0..1) of outputs in the task's style
    marks: Callable[[str], list[str]]  # what the measure saw in one output (for formal: the informal marks)
    epochs: float  # few examples train more epochs, so every adapter takes a similar number of steps


TASKS: dict[str, Task] = {
    "shakespeare": Task("shakespeare", "shakespeare_train.jsonl", "shakespeare_test.jsonl", "archaic share",
                        style.style_share, style.archaic_forms, 1.0),
    # Exercise 05's example file (16 rows) trains; a held-out set written for this session scores.
    "formal": Task("formal", "formal_emails.csv", "formal_emails_test.jsonl", "formal share",
                   style.formal_share, style.informal_marks, 10.0),
    "pirate": Task("pirate", "pirate_train.jsonl", "pirate_test.jsonl", "pirate share",
                   style.pirate_share, style.pirate_forms, 3.0),
}


def data_path(filename: str) -> Path:
    return package_file(filename)


def test_rows(task: Task, n: int | None = None) -> list[dict]:
    rows = data.read_rows(data_path(task.test_file))
    return rows if n is None else rows[:n]


def task_config(config: RunConfig, task: Task, output_dir: str | Path, epochs: float | None = None) -> RunConfig:
    """`config` for one task: its data files, its epochs, its own output folder, no checkpoints."""
    return with_overrides(
        config, train_file=str(data_path(task.train_file)), eval_file=str(data_path(task.test_file)),
        num_train_epochs=task.epochs if epochs is None else epochs, output_dir=str(Path(output_dir) / task.name),
        save_strategy="no", eval_each_epoch=False,
    )


@dataclass
class TrainedAdapter:
    task: str
    adapter_dir: str
    steps: int
    wall_s: float
    epoch_mean_loss: list
    trainable: int


def train_adapters(config: RunConfig, tasks: list[Task], output_dir: str | Path, tokenizer=None,
                   epochs: dict[str, float] | None = None, progress: bool = False, log=print) -> dict[str, TrainedAdapter]:
    """Train one adapter per task, each on a fresh copy of the base, and save it under output_dir/<task>."""
    tokenizer = tokenizer or models.load_tokenizer(config.model_name)
    out = {}
    for task in tasks:
        cfg = task_config(config, task, output_dir, (epochs or {}).get(task.name))
        result = train.train(cfg, progress=progress, model=models.load_model(cfg), tokenizer=tokenizer)
        adapter_dir = Path(cfg.output_dir) / "adapter"
        adapters.save_adapter(result.model, adapter_dir)
        counts = adapters.count_parameters(result.model)
        out[task.name] = TrainedAdapter(task.name, str(adapter_dir), result.trainer.state.global_step, result.wall_s,
                                        result.history.epoch_means(), counts.trainable)
        log(f"{task.name}: {out[task.name].steps} steps in {result.wall_s:.1f} s, epoch mean loss "
            + ", ".join(f"{loss:.3f}" for _, loss in out[task.name].epoch_mean_loss))
        del result
    return out


def load_all(config: RunConfig, adapter_dirs: dict[str, str]):
    """One base model holding every adapter under its task's name; the first is active."""
    model = models.load_model(config)
    for name, path in adapter_dirs.items():
        model = adapters.load_adapter(model, path, adapter_name=name)
    model.set_adapter(next(iter(adapter_dirs)))
    model.eval()
    return model


# ----------------------------------------------------------------- serving
def _encode(tokenizer, rows: list[dict], device):
    """Chat prompts for `rows`, left-padded into one batch (generation continues at the right edge)."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        prompts = [data.prompt_text(tokenizer, r) for r in rows]
        return tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    finally:
        tokenizer.padding_side = side


@torch.no_grad()
def generate_batch(model, tokenizer, rows: list[dict], adapter_names: list[str] | None = None,
                   max_new_tokens: int = 40) -> list[str]:
    """Greedy outputs for `rows` as ONE left-padded batch, in the rows' order.

    `adapter_names` (one per row) routes each row through its own adapter
    (peft's mixed-batch inference; '__base__' means no adapter); None uses the active adapter.
    """
    enc = _encode(tokenizer, rows, next(model.parameters()).device)
    stop = [tokenizer.eos_token_id]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id and im_end not in stop:
        stop.append(im_end)
    extra = {} if adapter_names is None else {"adapter_names": list(adapter_names)}
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                         eos_token_id=stop, pad_token_id=tokenizer.pad_token_id, **extra)
    new = out[:, enc["input_ids"].shape[1]:]  # (B, new tokens)
    return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]


@torch.no_grad()
def next_token_gap(model, tokenizer, rows: list[dict], names: list[str]) -> float:
    """max |logit difference| of the first generated token, mixed batch against each adapter alone,
    relative to the largest logit: how far routing moves the numbers (rounding only, if it is right)."""
    enc = _encode(tokenizer, rows, next(model.parameters()).device)
    mixed = model(**enc, adapter_names=list(names)).logits[:, -1].float()  # (B, V)
    alone = torch.empty_like(mixed)
    for name in dict.fromkeys(names):
        model.set_adapter(name)
        logits = model(**enc).logits[:, -1].float()
        for i, n in enumerate(names):
            if n == name:
                alone[i] = logits[i]
    return float((mixed - alone).abs().max() / alone.abs().max())


def mixed_batch(model, tokenizer, rows: list[dict], names: list[str], max_new_tokens: int = 40) -> dict:
    """Serve `rows` in one batch, row i through adapter names[i]; compare with each adapter alone.

    "Alone" is the same padded batch generated with one adapter active for every
    row (`set_adapter`), keeping the rows that adapter serves: the only
    difference from the mixed batch is the routing. peft computes each adapter on
    its sub-batch, a matrix product of another shape, so in 16-bit weights the
    rounding can differ and a greedy choice between two near-equal tokens can flip;
    `next_token_gap` shows the size of that difference. Returns the mixed outputs,
    the alone outputs, which rows matched, the gap and the wall times.
    """
    start = time.perf_counter()
    mixed = generate_batch(model, tokenizer, rows, adapter_names=names, max_new_tokens=max_new_tokens)
    mixed_s = time.perf_counter() - start
    alone = [""] * len(rows)
    start = time.perf_counter()
    for name in dict.fromkeys(names):
        model.set_adapter(name)
        outs = generate_batch(model, tokenizer, rows, max_new_tokens=max_new_tokens)
        for i, n in enumerate(names):
            if n == name:
                alone[i] = outs[i]
    alone_s = time.perf_counter() - start
    same = [m == a for m, a in zip(mixed, alone)]
    return {"mixed": mixed, "alone": alone, "rows_equal": same, "all_equal": all(same),
            "next_token_gap": next_token_gap(model, tokenizer, rows, names),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."), "mixed_s": mixed_s, "alone_s": alone_s}


def evaluate_tasks(model, tokenizer, tasks: list[Task], n_rows: int | None = None, max_new_tokens: int = 40) -> dict:
    """Each task's held-out rows answered by the base model and by the task's own adapter, scored.

    Two batches serve all tasks at once: every row through the base ('__base__'),
    then every row through its own task's adapter (a mixed batch).
    Returns {"scores": {task: {"base": share, "adapter": share}}, "rows", "names", "base", "adapter"}.
    """
    rows, names = [], []
    for t in tasks:
        for r in test_rows(t, n_rows):
            rows.append(r)
            names.append(t.name)
    base = generate_batch(model, tokenizer, rows, ["__base__"] * len(rows), max_new_tokens)
    own = generate_batch(model, tokenizer, rows, names, max_new_tokens)
    scores = {}
    for t in tasks:
        idx = [i for i, n in enumerate(names) if n == t.name]
        scores[t.name] = {"base": t.measure([base[i] for i in idx]), "adapter": t.measure([own[i] for i in idx])}
    return {"scores": scores, "rows": rows, "names": names, "base": base, "adapter": own}


def switch_latency(model, names: list[str], repeats: int = 200) -> dict:
    """Median seconds of `set_adapter` (flips a pointer in every LoRA layer), cycling through `names`."""
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        model.set_adapter(names[i % len(names)])
        times.append(time.perf_counter() - start)
    return {"set_adapter_median_s": statistics.median(times), "set_adapter_max_s": max(times), "repeats": repeats}


def reload_latency(model, name: str, adapter_dir: str, repeats: int = 3) -> float:
    """Median seconds to delete adapter `name` and load it again from disk: switching without keeping it loaded."""
    times = []
    for _ in range(repeats):
        model.delete_adapter(name)
        start = time.perf_counter()
        model.load_adapter(adapter_dir, adapter_name=name)
        times.append(time.perf_counter() - start)
    model.eval()
    return statistics.median(times)


def merge_switch_latency(model, a: str, b: str, repeats: int = 3) -> float:
    """Median seconds to switch a *merged* deployment from adapter a to b: unmerge a, merge b.

    Runs on a copy: merging into 16-bit weights and unmerging again rounds, so
    the served model's base weights would drift with every switch.
    """
    clone = copy.deepcopy(model)
    times = []
    clone.set_adapter(a)
    clone.merge_adapter()
    for i in range(repeats):
        nxt = b if i % 2 == 0 else a
        start = time.perf_counter()
        clone.unmerge_adapter()
        clone.set_adapter(nxt)
        clone.merge_adapter()
        times.append(time.perf_counter() - start)
    del clone
    return statistics.median(times)


def param_bytes(module, include=lambda name: True) -> int:
    """Bytes of the parameter tensors of `module` whose names pass `include` (shared tensors once)."""
    seen, total = set(), 0
    for name, p in module.named_parameters(remove_duplicate=False):
        if include(name) and p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def memory_comparison(model, names: list[str]) -> dict:
    """Bytes of parameters: one base + every adapter, against one merged model per adapter.

    Counts tensors held by the loaded model (numel x element size), not process
    memory. A merged model is measured: a copy of the base with one adapter
    merged in and peft's layers removed (it has the base's shapes and dtype).
    """
    base = param_bytes(model, lambda n: "lora_" not in n)
    per_adapter = {name: param_bytes(model, lambda n, name=name: "lora_" in n and f".{name}." in n) for name in names}
    active = model.active_adapter
    clone = copy.deepcopy(model)
    clone.set_adapter(names[0])
    merged = param_bytes(clone.merge_and_unload())
    del clone
    model.set_adapter(active)
    shared = base + sum(per_adapter.values())
    return {"base_bytes": base, "adapter_bytes": per_adapter, "base_plus_adapters_bytes": shared,
            "merged_model_bytes": merged, "merged_models_bytes": merged * len(names),
            "ratio": merged * len(names) / shared}


# -------------------------------------------------------------- composition
@torch.no_grad()
def delta_error(model, combined: str, adapter_names: list[str], weights: list[float]) -> float:
    """||delta_combined - sum_i w_i delta_i||_F / ||sum_i w_i delta_i||_F over every LoRA layer.

    delta = s * B @ A, the update an adapter adds to a weight (peft's get_delta_weight).
    """
    num, den = 0.0, 0.0
    for module in model.modules():
        if not (hasattr(module, "get_delta_weight") and combined in getattr(module, "lora_A", {})):
            continue
        target = sum(w * module.get_delta_weight(a).float() for a, w in zip(adapter_names, weights))
        got = module.get_delta_weight(combined).float()
        num += float((got - target).pow(2).sum())
        den += float(target.pow(2).sum())
    if den == 0.0:
        raise ValueError(f"adapters {adapter_names} have no LoRA layers holding {combined!r}.")
    return (num / den) ** 0.5


# peft's ways of combining adapters (`add_weighted_adapter(combination_type=...)`), not the training
# methods of config.METHODS or the compared recipes of methods.METHODS.
COMBINATIONS = {  # combination_type: keyword arguments it needs
    "linear": {}, "cat": {}, "svd": {}, "ties": {"density": 0.5}, "dare_linear": {"density": 0.5},
}


def compose(model, a: str, b: str, weights: tuple[float, float], methods=tuple(COMBINATIONS), seed: int = 0) -> list[dict]:
    """One combined adapter per method from adapters a and b; rank and relative delta error of each."""
    rows = []
    for method in methods:
        name = f"{method}_{a}_{b}"
        torch.manual_seed(seed)  # DARE drops entries at random
        adapters.combine(model, [a, b], list(weights), name, combination_type=method, **COMBINATIONS[method])
        rows.append({"method": method, "adapter": name, "rank": model.peft_config[name].r,
                     "relative_delta_error": delta_error(model, name, [a, b], list(weights))})
    return rows


def interpolate(model, tokenizer, a: Task, b: Task, steps: int = 5, n_rows: int = 12, method: str = "cat",
                max_new_tokens: int = 40) -> list[dict]:
    """Mix adapters a and b as (1 - t) a + t b for t in 0..1 and measure both tasks' styles.

    Each task is prompted with its own held-out rows (its own instruction) and
    scored with its own measure. 'cat' is exact, so t = 0 and t = 1 are the two
    adapters themselves.
    """
    rows_a, rows_b = test_rows(a, n_rows), test_rows(b, n_rows)
    out = []
    for i in range(steps):
        t = i / (steps - 1)
        name = f"mix_{i}"
        adapters.combine(model, [a.name, b.name], [1 - t, t], name, combination_type=method)
        gen = generate_batch(model, tokenizer, rows_a + rows_b, max_new_tokens=max_new_tokens)
        ga, gb = gen[: len(rows_a)], gen[len(rows_a):]
        row = {"weight": t}
        for task, gens in ((a, ga), (b, gb)):
            share = task.measure(gens)
            # a share of n_rows outputs: one row moves it by 1/n, so each point carries its 95% interval
            row[f"{task.name}: {task.measure_name}"] = share
            row[f"{task.name}: 95% interval"] = tuple(round(v, 3) for v in metrics.share_interval(share, len(gens)))
        out.append(row | {"rows": len(ga), "sample_a": ga[0], "sample_b": gb[0]})
        model.set_adapter(a.name)  # deleting the active adapter would make peft pick one and warn
        model.delete_adapter(name)
    return out
