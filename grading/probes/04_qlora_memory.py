"""Probes of exercise 04: they decide its points (peftlab.grader.probes; grading/README.md).

Each runs in the student's kernel after the notebook and returns plain values; the grader compares them
with what the solution returns. The memory predictions are asked for models and formats drawn from `seed`
(the class's secret). Each checks what its test cell checks and no more, so a wrong answer loses the same
tests in the grader as in the kernel (tests/test_fair_grading.py). The notebook frees its second 4-bit
model before the merges, so the probe that needs one loads it again with the student's `load_4bit`.
"""

from peftlab.grader.probes import close, exact, probe


def _linear_facts(model):
    """Kinds of the decoder's linear layers of a loaded model, and its norms' dtypes."""
    import bitsandbytes as bnb
    import torch

    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
    four = [m for m in linears.values() if isinstance(m, bnb.nn.Linear4bit)]
    return {"not 4-bit": sorted(n for n, m in linears.items() if not isinstance(m, bnb.nn.Linear4bit)),
            "quant types": sorted({m.weight.quant_state.quant_type for m in four}),
            "double quantization": all(bool(m.weight.quant_state.nested) for m in four),
            "norms float32": all(p.dtype == torch.float32 for n, p in model.named_parameters() if "norm" in n)}


@probe("test_load_4bit", compare=exact)
def load_4bit_settings(seed):
    q = nf4_config()  # noqa: F821 (the student's function)
    return {"settings": [bool(q.load_in_4bit), str(q.bnb_4bit_quant_type), bool(q.bnb_4bit_use_double_quant)],
            "compute dtype": str(q.bnb_4bit_compute_dtype), "model": _linear_facts(model4)}  # noqa: F821


@probe("test_trained", compare=exact)
def trained_adapter(seed):
    from peftlab import adapters

    moved = [n for n, p in result.model.named_parameters()  # noqa: F821 (the notebook's training result)
             if "lora_B" in n and float(p.detach().abs().sum()) > 0]
    return {"some lora_B moved": bool(moved), "trainable": int(adapters.count_parameters(result.model).trainable)}  # noqa: F821


@probe("test_predict", compare=close(rtol=1e-6))
def predictions(seed):
    import random

    rng = random.Random(seed)
    names = ["Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-3B-Instruct",
             "Qwen/Qwen2.5-7B-Instruct"]
    drawn = rng.sample(names, 3)
    out = {"bytes per NF4 weight": [float(nf4_bytes_per_param(True)), float(nf4_bytes_per_param(False))],  # noqa: F821
           "GiB": [[name, fmt, float(base_weight_gib(name, fmt))]  # noqa: F821
                   for name in drawn for fmt in ("bfloat16", "nf4")]}
    fmt = rng.choice(["int3", "fp8", "nf2", "int5"])
    try:
        base_weight_gib(drawn[0], fmt)  # noqa: F821
        out["unknown format"] = "no error"
    except ValueError as exc:
        out["unknown format"] = ["ValueError", fmt in str(exc)]
    except Exception as exc:  # the test asks for a clear ValueError
        out["unknown format"] = [type(exc).__name__]
    return out


@probe("test_measured", compare=close(rtol=1e-9))
def measured(seed):
    import bitsandbytes as bnb
    import torch
    from peftlab import memory

    fresh = load_4bit()  # noqa: F821
    predicted, real = float(predicted_loaded_bytes(fresh)), float(memory.measured_weights_bytes(fresh))  # noqa: F821
    n4 = sum(m.in_features * m.out_features for m in fresh.modules() if isinstance(m, bnb.nn.Linear4bit))
    other = sum(p.numel() for p in fresh.parameters() if not isinstance(p, bnb.nn.Params4bit))
    size = torch.finfo(getattr(torch, compute_dtype)).bits // 8  # noqa: F821
    return {"within 10% of the measured bytes": abs(predicted - real) / real < 0.10,
            "bytes of the unquantized parameters": predicted - n4 * memory.nf4_bytes_per_param(True),
            "expected unquantized bytes": float(other * size)}


@probe("test_merge", compare=exact)
def merge_comparison(seed):
    right, original, naive = (merges[k] for k in ("dequantized base (right)", "original 16-bit W", "4-bit weights"))  # noqa: F821
    return {"right merge has 4-bit layers": int(right["four_bit_layers"]) > 0,
            "right merge is a peft model": bool(right["peft"]),
            "right merge closest": float(right["logit_error"]) < float(naive["logit_error"])
            and float(right["logit_error"]) < float(original["logit_error"])}
