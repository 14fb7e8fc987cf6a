"""Probes of exercise 03: they decide its points (peftlab.grader.probes; grading/README.md).

Each runs in the student's kernel after the notebook, on budgets, ranks, target lists and model shapes drawn
from `seed` (the class's secret), and returns plain values; the grader compares them with what the solution
returns. Each checks what its test cell checks, so a wrong answer loses the same tests
(tests/test_fair_grading.py). No probe's value is the same at every seed: the target sets, the per-module
config and what a dict in target_modules does are written out in the release, and a kernel that lies about
its test cells could send them without the student's code (the gate's replayer does).
"""

from peftlab.grader.probes import exact, probe


def _linears():
    """The linear layers of a Qwen2 decoder layer (a function: only functions travel to the kernel)."""
    return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@probe("test_target_sets", compare=exact)
def target_sets(seed):
    """The modules each named set really adapts on a fresh model, read from peft's wrapped layers, and its
    LoRA parameters at a drawn rank (counted by peft on the meta device)."""
    import random

    from peftlab import adapters, checks, models
    from peftlab.config import RunConfig

    rng = random.Random(seed)
    out = {}
    for name, targets in TARGET_SETS.items():  # noqa: F821 (the student's dict)
        with checks.quiet():
            wrapped = adapters.attach(models.load_model(base), RunConfig(r=2, target_modules=list(targets)))  # noqa: F821
        r = rng.randint(3, 64)
        out[str(name)] = {"modules": sorted({m.rsplit(".", 1)[-1] for m in adapters.adapter_modules(wrapped)}),
                          "parameters at a drawn rank": adapters.lora_counts_on_meta(
                              model_name, RunConfig(r=r, target_modules=list(targets))).trainable}  # noqa: F821
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
    """The config on the notebook's model, and on a Qwen2 of drawn depth and widths built on the meta device:
    its ranks, scalings and LoRA parameter count. The rule (q_proj, down_proj, layer 0's v_proj) holds on any
    depth; a config that lists the tiny model's two layers one by one does not."""
    import random

    import torch
    from peft import get_peft_model
    from peftlab import adapters, checks, models

    def read(adapted, layer):
        attn = adapted.base_model.model.model.layers[layer].self_attn
        return {"ranks": {str(k): int(v) for k, v in sorted(adapters.adapter_modules(adapted).items())},
                "q_proj scaling": round(float(attn.q_proj.scaling["default"]), 6),
                "v_proj rank": int(attn.v_proj.r["default"]),
                "v_proj scaling": round(float(attn.v_proj.scaling["default"]), 6),
                "trainable": sum(p.numel() for p in adapted.parameters() if p.requires_grad)}

    rng = random.Random(seed)
    with checks.quiet():
        out = {"notebook's model": read(get_peft_model(models.load_model(base), per_module_config()), 1)}  # noqa: F821
        tiny = models.model_config(model_name)  # noqa: F821
        heads, head_dim = rng.choice([4, 8]), rng.choice([8, 12, 16])
        fields = {k: v for k, v in tiny.to_dict().items() if k != "layer_types"}  # one per layer: rebuilt
        fields.update(num_hidden_layers=rng.randint(3, 9), num_attention_heads=heads, num_key_value_heads=heads // 2,
                      head_dim=head_dim, hidden_size=heads * head_dim, intermediate_size=16 * rng.randint(4, 24))
        config = type(tiny).from_dict(fields)
        with torch.device("meta"):
            drawn = get_peft_model(models.meta_model(config), per_module_config())  # noqa: F821
        out["drawn model"] = read(drawn, rng.randrange(1, config.num_hidden_layers))
    return out


@probe("test_dict_targets", compare=exact)
def dict_targets(seed):
    """The posts' dict, then dicts of drawn modules and ranks (never the default 4: the ranks the dict asks for
    must differ from the ones peft applies)."""
    import random

    rng = random.Random(seed)
    dicts = [{"q_proj": 16, "v_proj": 2}]
    dicts += [{m: rng.choice([1, 2, 8, 16, 32]) for m in rng.sample(_linears(), rng.randint(2, 4))} for _ in range(2)]
    out = []
    for ranks in dicts:
        applied = dict_target_ranks(dict(ranks))  # noqa: F821
        out.append({"ranks": sorted({int(r) for r in applied.values()}),
                    "modules": sorted({str(n).rsplit(".", 1)[-1] for n in applied})})
    return out
