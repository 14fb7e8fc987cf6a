"""Probes of exercise 02: they decide its points (peftlab.grader.probes; grading/README.md).

Each runs in the student's kernel after the notebook, on ranks, alphas and target lists drawn from
`seed` (the class's secret) where the task takes inputs, and returns plain values; the grader compares
them with what the solution returns. Training is seeded through the config, so the solution's runs give
the same losses (compared with a tolerance: summation order may differ). Each checks what its test cell
checks, so a wrong answer loses the same tests (tests/test_fair_grading.py). No probe's value is the same at
every seed: the table's settings, "the run is reproducible" and the notebook's learning rates are known
before any work is done, and a kernel that lies about its test cells could send them without the student's
code (the gate's replayer did, for 6 of 11 points). So the two table probes also run the student's `sweep()`
over drawn ranks and learning rates, with a stand-in `run_one` that trains nothing.
"""

from peftlab.grader.probes import close, probe


def _linears():
    """The linear layers of a Qwen2 decoder layer (a function: only functions travel to the kernel)."""
    return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
def _drawn_sweep(rng):
    """The runs the student's `sweep()` asks for when `ranks` and `learning_rates` are drawn: one row
    (scheme, r, alpha, rslora, learning rate) each, sorted. A stand-in `run_one` returns its arguments and
    trains nothing (the notebook's own table, judged beside this, shows the real runs), so this costs
    milliseconds and a slip in `run_one` costs no more tests than it does without it."""
    import math

    from peftlab import checks

    def run_one(r, alpha, rslora, learning_rate):
        return {"r": r, "alpha": alpha, "rslora": rslora, "learning_rate": learning_rate,
                "scaling": alpha / (math.sqrt(r) if rslora else r), "trainable": 0, "eval_loss": 1.0,
                "perplexity": math.e, "seconds": 1.0}

    drawn = {"ranks": rng.sample(range(1, 65), rng.randint(2, 3)),  # in drawn order, not sorted
             "learning_rates": [round(10 ** rng.uniform(-4, -2), 7) for _ in range(rng.randint(2, 3))]}
    namespace = globals()  # the notebook's: the probe runs in its kernel
    saved = {name: namespace[name] for name in drawn}
    namespace.update(drawn)
    try:
        with checks.quiet(), checks.standing_in(namespace, run_one=run_one):
            table = sweep()  # noqa: F821 (the student's function)
    finally:
        namespace.update(saved)
    rows = [[str(row["scheme"]), int(row["r"]), float(row["alpha"]), bool(row["rslora"]), float(row["learning_rate"])]
            for row in table.to_dict("records")]
    return sorted(rows, key=lambda row: (row[0], row[1], row[4]))


# Held-out losses of the same seeded run: equal up to float summation order.
LOSS = close(rtol=1e-4, atol=1e-6)
# Each probe checks what its test cell checks and no more, so a wrong answer loses the same tests in the
# grader as in the kernel (the fair-grading gate requires it); the points are decided here.


@probe("test_scaling_counts", compare=close(rtol=1e-9))
def scaling_and_counts(seed):
    import random

    from peftlab.models import meta_model

    rng = random.Random(seed)
    scalings = []
    for i in range(6):  # half of them rsLoRA, whatever the seed
        r, alpha, rs = rng.randint(2, 64), rng.choice([1, 4, 8, 16, 32, 64]) * rng.randint(1, 3), i % 2 == 0
        scalings.append([r, alpha, rs, float(lora_scaling(r, alpha, rslora=rs))])  # noqa: F821
    big = meta_model("Qwen/Qwen2.5-3B-Instruct")
    counts = []
    for m in (model, big):  # noqa: F821 (the notebook's tiny model)
        targets = sorted(rng.sample(_linears(), rng.randint(1, 7)))
        r = rng.randint(1, 32)
        counts.append([targets, r, int(lora_param_count(m, targets, r))])  # noqa: F821
    return {"scalings": scalings, "counts": counts}


@probe("test_sweep_table", compare=close(rtol=1e-9))
def sweep_table(seed):
    """What the table test checks, row by row in a fixed order: settings, scaling, trainable count, and
    whether perplexity is exp(loss) and the run finite and timed. The losses themselves are judged by
    test_heldout_metric, which declares the cell that measures them. Then the runs of a sweep over drawn
    ranks and learning rates."""
    import math
    import random

    rows = []
    for row in results.to_dict("records"):  # noqa: F821 (the notebook's table)
        rows.append([str(row["scheme"]), int(row["r"]), float(row["learning_rate"]), float(row["alpha"]),
                     bool(row["rslora"]), float(row["scaling"]), int(row["trainable"]),
                     abs(float(row["perplexity"]) - math.exp(float(row["eval_loss"]))) <= 1e-6 * float(row["perplexity"]),
                     bool(math.isfinite(row["eval_loss"]) and row["seconds"] > 0)])
    return {"table": sorted(rows, key=lambda r: (r[0], r[1], r[2])), "drawn sweep": _drawn_sweep(random.Random(seed + 2))}


@probe("test_sweep_consistent", compare=close(rtol=1e-9))
def repeated_run(seed):
    """A drawn configuration trained twice, and the sweep's own repeat: reproducible, better than untrained;
    and the learning rates of the alpha=16 scheme, in the notebook's sweep and in one over drawn settings."""
    import random

    rng = random.Random(seed)
    r, alpha = rng.choice(ranks), rng.choice([4, 8, 16, 32])  # noqa: F821
    first = float(run_one(r, alpha, False, learning_rates[0])["eval_loss"])  # noqa: F821
    second = float(run_one(r, alpha, False, learning_rates[0])["eval_loss"])  # noqa: F821
    row = results[(results.r == ranks[0]) & (results.scheme == "alpha=16")  # noqa: F821
                  & (results.learning_rate == learning_rates[0])]  # noqa: F821
    return {"drawn run reproducible": abs(first - second) <= 1e-4 * abs(first),
            "sweep row reproducible": abs(float(again["eval_loss"]) - float(row.eval_loss.iloc[0]))  # noqa: F821
            <= 1e-4 * abs(float(row.eval_loss.iloc[0])),
            "runs beating the untrained model >= 75%": bool((results.eval_loss < untrained).mean() >= 0.75),  # noqa: F821
            "learning rates of alpha=16": sorted({float(x) for x in results[results.scheme == "alpha=16"].learning_rate}),  # noqa: F821
            "learning rates of alpha=16, drawn sweep": sorted({row[4] for row in _drawn_sweep(random.Random(seed + 3))
                                                               if row[0] == "alpha=16"})}


@probe("test_heldout_metric", compare=LOSS)
def heldout_metric(seed):
    """A drawn configuration's reported loss: the held-out loss, as the solution measures it. Rank, alpha and
    learning rate are drawn from ranges, not from the notebook's few values, so no other seed asks the same."""
    import random

    rng = random.Random(seed + 1)
    row = run_one(rng.randint(2, 24), rng.randint(4, 64), False, round(10 ** rng.uniform(-3.3, -2), 7))  # noqa: F821
    return {"eval_loss": float(row["eval_loss"]), "trainable": int(row["trainable"])}


