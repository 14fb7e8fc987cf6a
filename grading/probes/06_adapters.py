"""Probes of exercise 06: they decide its points (peftlab.grader.probes; grading/README.md).

Each runs in the student's kernel after the notebook, on routings and weights drawn from `seed` (the class's
secret), and returns plain values: the adapters a model holds, the active one, and logits at the last
position of each row (the first 48 of the vocabulary: enough to tell adapters apart, small enough to send).
The grader compares them with what the solution returns. Each checks what its test cell checks, so a wrong
answer loses the same tests (tests/test_fair_grading.py).

The probes of `route` and `combine` run on the course's loader (`multitask.load_all`), as their test cells
do when graded: a slip in `load_two` costs `test_load_two` alone ("one slip, one test").
"""

from peftlab.grader.probes import close, probe

# Logits of the same weights and inputs: equal up to float summation order.
LOGITS = close(rtol=1e-4, atol=1e-5)


def _two():
    """Both adapters on one base, by the course's loader: what a right `load_two` returns."""
    from peftlab import checks, multitask

    with checks.quiet():
        return multitask.load_all(config, ADAPTER_DIRS)  # noqa: F821


def _last(logits):
    return [[round(float(x), 6) for x in row[-1, :48]] for row in logits]


@probe("test_load_two", compare=LOGITS)
def load_two_logits(seed):
    """Each adapter's logits on the notebook's prompts and on drawn token ids: on the prompts alone the logits
    are the same at every seed, and a lying kernel could send a classmate's."""
    import torch

    fresh = load_two()  # noqa: F821
    out = {"adapters": sorted(fresh.peft_config), "active": str(fresh.active_adapter), "training": bool(fresh.training)}
    g = torch.Generator().manual_seed(seed % 2**31)
    ids = torch.randint(0, fresh.config.vocab_size, (2, 3 + seed % 9), generator=g)
    for name in ("shakespeare", "pirate"):
        fresh.set_adapter(name)
        with torch.no_grad():
            drawn = fresh(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        out[name] = {"prompts": _last(logits_of(fresh)), "drawn": _last(drawn)}  # noqa: F821
    return out


@probe("test_route", compare=LOGITS)
def routed_logits(seed):
    """A drawn routing of the four rows; the base rows apart, as the test checks them first."""
    import random

    rng = random.Random(seed)
    names = [rng.choice(["shakespeare", "pirate", "__base__"]) for _ in range(4)]
    base, adapter = rng.sample(range(4), 2)  # a base row and an adapter row at every seed: one name for the
    names[base] = "__base__"  # whole batch must never route it right
    names[adapter] = rng.choice(["shakespeare", "pirate"])
    logits = _last(route(_two(), names))  # noqa: F821
    return {"names": names, "base rows": [row for row, n in zip(logits, names) if n == "__base__"],
            "adapter rows": [row for row, n in zip(logits, names) if n != "__base__"]}


@probe("test_combine", compare=LOGITS)
def combined_logits(seed):
    import random

    rng = random.Random(seed + 1)
    weights = (round(rng.uniform(0.1, 1.0), 2), round(rng.uniform(0.1, 1.0), 2))
    mixed = combine(_two(), weights)  # noqa: F821
    return {"weights": list(weights), "active": str(mixed.active_adapter), "rank": int(mixed.peft_config["mix"].r),
            "logits": _last(logits_of(mixed))}  # noqa: F821
