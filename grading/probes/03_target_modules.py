"""Probes of exercise 03: they decide its points (peftlab.grader.probes; grading/README.md).

Each runs in the student's kernel after the notebook, on budgets and target lists drawn from `seed` (the
class's secret) where the task takes inputs, and returns plain values; the grader compares them with what
the solution returns. Each checks what its test cell checks, so a wrong answer loses the same tests
(tests/test_fair_grading.py).
"""

from peftlab.grader.probes import exact, probe


def _linears():
    """The linear layers of a Qwen2 decoder layer (a function: only functions travel to the kernel)."""
    return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@probe("test_target_sets", compare=exact)
def target_sets(seed):
    """The modules each named set really adapts on a fresh model, read from peft's wrapped layers."""
    from peftlab import adapters, checks, models
    from peftlab.config import RunConfig

    out = {}
    for name, targets in TARGET_SETS.items():  # noqa: F821 (the student's dict)
        with checks.quiet():
            wrapped = adapters.attach(models.load_model(base), RunConfig(r=2, target_modules=list(targets)))  # noqa: F821
        out[str(name)] = sorted({m.rsplit(".", 1)[-1] for m in adapters.adapter_modules(wrapped)})
    return out


@probe("test_rank_for_budget", compare=exact)
def rank_for_budget_on_drawn_budgets(seed):
    import random

    rng = random.Random(seed)
    cases = [(sorted(rng.sample(_linears(), rng.randint(1, 4))), rng.randint(3_000, 60_000)) for _ in range(6)]
    cases.append((["q_proj"], rng.randint(1, 40)))  # below one rank: a clear ValueError naming the budget
    out = []
    for targets, amount in cases:
        try:
            out.append([targets, amount, int(rank_for_budget(targets, amount))])  # noqa: F821
        except ValueError as exc:
            out.append([targets, amount, "ValueError", "budget" in str(exc).lower()])
        except Exception as exc:  # the test asks for a ValueError, nothing else
            out.append([targets, amount, type(exc).__name__])
    # As the visible test: the rank for each of the notebook's own sets fits its budget and r + 1 does not.
    from peftlab import adapters
    from peftlab.config import RunConfig

    def count(targets, r):
        return adapters.lora_counts_on_meta(model_name, RunConfig(r=r, target_modules=targets)).trainable  # noqa: F821

    fits = []
    for targets in TARGET_SETS.values():  # noqa: F821 (the student's sets)
        r = rank_for_budget(list(targets), budget)  # noqa: F821 (the notebook's budget)
        fits.append(count(list(targets), r) <= budget < count(list(targets), r + 1))  # noqa: F821
    out.append(["the notebook's sets fit the budget", all(fits)])
    return out


@probe("test_per_module", compare=exact)
def per_module_ranks_and_scalings(seed):
    from peft import get_peft_model
    from peftlab import adapters, checks, models

    with checks.quiet():
        adapted = get_peft_model(models.load_model(base), per_module_config())  # noqa: F821
    layer = adapted.base_model.model.model.layers[1].self_attn
    return {"ranks": {str(k): int(v) for k, v in sorted(adapters.adapter_modules(adapted).items())},
            "q_proj scaling": round(float(layer.q_proj.scaling["default"]), 6),
            "v_proj rank": int(layer.v_proj.r["default"]),
            "v_proj scaling": round(float(layer.v_proj.scaling["default"]), 6)}


@probe("test_dict_targets", compare=exact)
def dict_targets(seed):
    applied = dict_target_ranks()  # noqa: F821
    return {"ranks": sorted({int(r) for r in applied.values()}),
            "modules": sorted({str(n).rsplit(".", 1)[-1] for n in applied})}
