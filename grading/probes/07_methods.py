"""Probes of exercise 07: they decide its points (peftlab.grader.probes; grading/README.md).

Each runs in the student's kernel after the notebook, on ranks, target lists and token counts drawn from
`seed` (the class's secret), and returns plain values; the grader compares them with what the solution
returns. Counts are exact integers; held-out losses of the same seeded run agree up to summation order.
Each checks what its test cell checks, so a wrong answer loses the same tests (tests/test_fair_grading.py).
No probe's value is the same at every seed: full fine-tuning is also counted on Qwen2 configs of drawn
shapes, and the rerun of a method uses a drawn learning rate, since a kernel that lies about its test cells
could otherwise send the fixed models' counts without the student's code (the gate's replayer did).
"""

from peftlab.grader.probes import close, exact, probe


def _linears():
    """The linear layers of a Qwen2 decoder layer (a function: only functions travel to the kernel)."""
    return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _shapes():
    """linear_shapes of both models, which test_lora_counts checks first."""
    return {key: {name: list(shape) for name, shape in linear_shapes(configs[key]).items()}  # noqa: F821
            for key in (model_name, big_model)}  # noqa: F821


@probe("test_lora_counts", compare=exact)
def lora_counts(seed):
    import random

    rng = random.Random(seed)
    out = [_shapes()]
    for key in (model_name, big_model, big_model):  # noqa: F821 (the notebook's parameters)
        targets = sorted(rng.sample(_linears(), rng.randint(1, 7)))
        r = rng.randint(1, 64)
        out.append([key, targets, r, int(lora_params(configs[key], targets, r)),  # noqa: F821
                    int(dora_params(configs[key], targets, r))])  # noqa: F821
    return out


@probe("test_other_counts", compare=exact)
def other_counts(seed):
    import random

    from peftlab import checks, models

    rng = random.Random(seed + 1)
    out = []
    # The real layer shapes stand in for the student's linear_shapes, as in the test cell: a slip there costs
    # test_lora_counts alone.
    with checks.quiet(), checks.standing_in(globals(), linear_shapes=models.layer_shapes_on_meta):
        for key in (model_name, big_model):  # noqa: F821
            n = rng.randint(1, 100)
            cfg = configs[key]  # noqa: F821
            out.append([key, n, int(ia3_params(cfg)), int(prompt_params(cfg, n)),  # noqa: F821
                        int(prefix_params(cfg, n, projection=False)), int(prefix_params(cfg, n, projection=True))])  # noqa: F821
    return out


@probe("test_full_count", compare=exact)
def full_count(seed):
    """The notebook's models and Qwen2.5-7B (its lm_head is not tied), then two Qwen2 configs of drawn depth,
    widths and vocabulary, one with a tied lm_head and one without."""
    import random

    from peftlab import checks, models

    rng = random.Random(seed + 3)
    tiny = models.model_config(model_name)  # noqa: F821
    drawn = []
    for tied in (True, False):
        heads, head_dim = rng.choice([2, 4, 8]), rng.choice([8, 16, 32])
        fields = {k: v for k, v in tiny.to_dict().items() if k != "layer_types"}  # one per layer: rebuilt
        fields.update(num_hidden_layers=rng.randint(1, 12), num_attention_heads=heads,
                      num_key_value_heads=rng.choice([k for k in (1, 2, 4, 8) if k <= heads]), head_dim=head_dim,
                      hidden_size=heads * head_dim, intermediate_size=16 * rng.randint(2, 64),
                      vocab_size=rng.randint(1_000, 160_000), tie_word_embeddings=tied)
        drawn.append(type(tiny).from_dict(fields))
    with checks.quiet(), checks.standing_in(globals(), linear_shapes=models.layer_shapes_on_meta):
        out = {key: int(full_params(models.model_config(key)))  # noqa: F821
               for key in (model_name, big_model, "Qwen/Qwen2.5-7B-Instruct")}  # noqa: F821
        out["drawn configs"] = [int(full_params(cfg)) for cfg in drawn]  # noqa: F821
    return out


@probe("test_runs", compare=close(rtol=1e-4, atol=1e-6))
def runs_and_rerun(seed):
    """The table's methods and counts, a finite held-out loss below the untrained one, and one drawn method
    trained again at a drawn learning rate (`learning_rates[method]`, which run_method reads): its reported
    loss is the held-out loss, as the solution measures it."""
    import math
    import random

    rows = runs.to_dict("records")  # noqa: F821
    rng = random.Random(seed + 2)
    method = rng.choice(list(methods))  # noqa: F821
    namespace = globals()  # the notebook's: the probe runs in its kernel
    given = namespace["learning_rates"]
    namespace["learning_rates"] = {**given, method: round(given[method] * 2 ** rng.uniform(-1, 0.5), 7)}
    try:
        again = run_method(method)  # noqa: F821
    finally:
        namespace["learning_rates"] = given
    return {"methods": [str(row["method"]) for row in rows],
            "trainable": [int(row["trainable"]) for row in rows],
            "total": [int(row["total"]) for row in rows],
            "finite and below untrained": [bool(math.isfinite(row["eval_loss"]) and row["eval_loss"] < untrained)  # noqa: F821
                                           for row in rows],
            "rerun": [str(again["method"]), float(again["learning_rate"]), int(again["trainable"]),
                      float(again["eval_loss"])]}
