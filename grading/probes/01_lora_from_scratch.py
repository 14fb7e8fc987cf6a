"""Probes of exercise 01: they decide its points (peftlab.grader.probes; grading/README.md).

Each function runs in the student's kernel after the notebook, on sizes and tensors drawn from `seed`
(the submission's, from the class secret) with generators of its own, and returns plain values; the grader
compares them with what the instructor's solution returns for the same seed. Each checks what its test cell
checks, so a wrong answer loses the same tests (tests/test_fair_grading.py), and the draws are bounded so
that it loses them at every seed: r is never 1 where the scaling counts, no matrix is square where a
transpose would fit.
"""

from peftlab.grader.probes import close, probe

# Computed float values: the student's code may order the same operations differently.
CLOSE = close(rtol=1e-4, atol=1e-5)


@probe("test_lora_init", compare=CLOSE)
def lora_init(seed):
    import random

    import torch
    from torch import nn

    rng = random.Random(seed)
    d_in = rng.randint(5, 24)
    d_out = d_in + rng.choice([-3, -2, -1, 1, 2, 3])  # never square: transposed shapes must not fit
    r = rng.randint(2, 5)  # never 1: at r = 1, alpha / sqrt(r) = alpha / r, and a wrong scaling would pass
    alpha = r * rng.choice([2, 3, 4]) + rng.randint(1, 3)
    torch.manual_seed(seed % 2**31)
    layer = LoRALinear(nn.Linear(d_in, d_out), r=r, alpha=alpha)  # noqa: F821 (the student's class)
    x = torch.randn(4, d_in, generator=torch.Generator().manual_seed(seed % 2**31))
    return {"A": list(layer.lora_A.shape), "B": list(layer.lora_B.shape),
            "B_zero": bool((layer.lora_B == 0).all()), "scaling": float(layer.scaling),
            "trainable": [bool(layer.lora_A.requires_grad), bool(layer.lora_B.requires_grad)],
            "base_frozen": not any(p.requires_grad for p in layer.base.parameters()),
            "no_op": bool(torch.equal(layer(x), layer.base(x)))}


def _layer(seed, rng):
    """A LoRALinear of drawn sizes whose A and B hold drawn values, and an input (shared by two probes)."""
    import torch
    from torch import nn

    d_in = rng.randint(6, 20)
    d_out = d_in + rng.randint(1, 9)  # never square: a transposed update must not fit
    r = rng.randint(2, 5)  # never 1: alpha / sqrt(r) must differ from alpha / r at every seed
    alpha = r + rng.randint(1, 9)  # never equal to r: a missing alpha / r must show
    g = torch.Generator().manual_seed(seed % 2**31)
    torch.manual_seed(seed % 2**31)
    layer = LoRALinear(nn.Linear(d_in, d_out), r=r, alpha=alpha)  # noqa: F821
    with torch.no_grad():
        layer.lora_A.copy_(torch.randn(r, d_in, generator=g))
        layer.lora_B.copy_(torch.randn(d_out, r, generator=g))
    return layer, torch.randn(3, d_in, generator=g)


@probe("test_lora_matches_peft", compare=CLOSE)
def lora_forward(seed):
    import random

    import torch

    rng = random.Random(seed)
    out = []
    for _ in range(2):
        layer, x = _layer(rng.randrange(2**31), rng)
        with torch.no_grad():
            out.append({"forward": layer(x).tolist(), "delta_weight": layer.delta_weight().tolist()})
    return out


@probe("test_merge_unmerge", compare=CLOSE)
def lora_merge(seed):
    import random

    import torch

    layer, x = _layer(seed, random.Random(seed))
    with torch.no_grad():
        w0 = layer.base.weight.detach().clone()
        before = layer(x).tolist()
        layer.merge()
        merged, dw = layer(x).tolist(), (layer.base.weight - w0).tolist()
        layer.merge()
        twice = (layer.base.weight - w0).tolist()
        layer.unmerge()
        layer.unmerge()
        back = (layer.base.weight - w0).abs().max().item()
        return {"before": before, "merged": merged, "dW": dw, "dW_merged_twice": twice,
                "W_restored": back < 1e-5, "after_unmerge": layer(x).tolist()}


@probe("test_add_lora_counts", compare=CLOSE)
def lora_injection(seed):
    import random

    import torch
    from peftlab import data, models
    from peftlab.config import RunConfig

    rng = random.Random(seed)
    targets = rng.choice([["q_proj", "v_proj"], ["k_proj", "o_proj"], ["q_proj", "k_proj", "v_proj"],
                          ["up_proj", "down_proj"]])
    r = rng.randint(2, 6)
    alpha = 2 * r + 1
    torch.manual_seed(seed % 2**31)
    model, tokenizer = models.load(RunConfig(model_name=model_name, device=device, dtype=dtype))  # noqa: F821
    row = {"instruction": f"Count to {rng.randint(3, 9)}.", "input": "", "output": "One, two, three."}
    batch = {k: torch.tensor([v]).to(model.device) for k, v in data.tokenize_example(tokenizer, row, 48).items()
             if k != "truncated"}
    with torch.no_grad():
        base_logits = model(**batch).logits
    mine = add_lora(model, targets, r=r, alpha=alpha)  # noqa: F821
    returned = mark_only_lora_trainable(mine)  # noqa: F821
    wrapped = [m for m in mine.modules() if isinstance(m, LoRALinear)]  # noqa: F821
    with torch.no_grad():
        unchanged = bool((mine(**batch).logits - base_logits).abs().max() <= 1e-6)
    out = mine(**batch)
    out.loss.backward()
    named = list(mine.named_parameters())
    return {"returned": int(returned), "requires_grad": sum(p.numel() for _, p in named if p.requires_grad),
            "wrapped": len(wrapped), "B_zero": all(bool((m.lora_B == 0).all()) for m in wrapped),
            "logits_unchanged": unchanged,
            "B_gradients": all(p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in named if "lora_B" in n),
            "frozen_with_gradients": sum(p.grad is not None for n, p in named if "lora_" not in n)}


@probe("test_rank_k", compare=close(rtol=1e-3, atol=1e-4))
def rank_k(seed):
    import random

    import torch
    from peftlab import lowrank

    rng = random.Random(seed)
    d_in = rng.randint(8, 20)
    d_out = d_in + rng.randint(3, 10)  # never square: factors returned the wrong way round must not fit
    M = lowrank.low_rank_plus_noise(d_out, d_in, true_rank=rng.randint(2, 5), noise=0.05, seed=rng.randrange(10**6))
    out = {}
    for k in sorted({1, rng.randint(2, 6), min(d_out, d_in)}):
        B, A = rank_k_factors(M, k)  # noqa: F821 (the student's function)
        out[f"k={k}"] = {"shapes": [list(B.shape), list(A.shape)],
                         "error": torch.linalg.matrix_norm(M - B @ A).item(), "BA": (B @ A).sum().item()}
    for k in (0, min(d_out, d_in) + 1):
        try:
            rank_k_factors(M, k)  # noqa: F821
            out[f"k={k}"] = "no error"
        except ValueError as exc:
            out[f"k={k}"] = "ValueError naming k" if "k" in str(exc).lower() else "ValueError"
        except Exception as exc:
            out[f"k={k}"] = type(exc).__name__
    return out
