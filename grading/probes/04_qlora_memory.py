"""Probes of exercise 04: they decide its points (peftlab.grader.probes; grading/README.md).

Each runs in the student's kernel after the notebook and returns plain values; the grader compares them
with what the solution returns. The memory predictions are asked for models and formats drawn from `seed`
(the class's secret). Each checks what its test cell checks and no more, so a wrong answer loses the same
tests in the grader as in the kernel (tests/test_fair_grading.py). The notebook frees its second 4-bit
model before the merges, so the probe that needs one loads it again with the student's `load_4bit`.

No probe's value is the same at every seed: the settings, "the adapter trained" and the notebook's own
model are known before any work is done, and a kernel that lies about its test cells could send them
without the student's code (the gate's replayer earned 10 of 10 points so). So the loading and memory
probes also load, with the student's `load_4bit` and `model_name` set to it, a randomly initialised Qwen2
of drawn depth and widths written to the kernel's /tmp; the prediction probe asks for such a model by its
folder; the training and merge probes read drawn layers of the notebook's models.
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


def _drawn_qwen2(rng, weights=True):
    """A folder in the kernel's /tmp holding a Qwen2 of drawn depth, widths and vocabulary (the notebook's
    model's other settings), randomly initialised with a drawn torch seed; with `weights=False` its config
    alone, which is all `models.meta_model` reads."""
    import tempfile

    import torch
    from peftlab import checks, models
    from transformers import AutoModelForCausalLM

    small = models.model_config(model_name)  # noqa: F821 (the notebook's parameters)
    heads, head_dim = rng.choice([2, 4, 8]), rng.choice([16, 32])
    fields = {k: v for k, v in small.to_dict().items() if k != "layer_types"}  # one per layer: rebuilt
    fields.update(num_hidden_layers=rng.randint(1, 4), num_attention_heads=heads,
                  num_key_value_heads=rng.choice([k for k in (1, 2, 4) if k <= heads]), head_dim=head_dim,
                  hidden_size=heads * head_dim, intermediate_size=32 * rng.randint(2, 12),
                  vocab_size=rng.randint(300, 3000), tie_word_embeddings=rng.random() < 0.5)
    config = type(small).from_dict(fields)
    folder = tempfile.mkdtemp(prefix="drawn-qwen2-")
    if not weights:
        config.save_pretrained(folder)
        return folder
    torch.manual_seed(rng.randrange(2**31))
    with checks.quiet():
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def _load_drawn(folder):
    """The student's `load_4bit()` with `model_name` (and the run config's) set to `folder`, as if the
    parameters cell had named it; the notebook's own are put back afterwards."""
    from peftlab import checks
    from peftlab.config import with_overrides

    namespace = globals()  # the notebook's: the probe runs in its kernel
    saved = {name: namespace[name] for name in ("model_name", "config")}
    namespace.update(model_name=folder, config=with_overrides(saved["config"], model_name=folder))
    try:
        with checks.quiet():
            return load_4bit()  # noqa: F821 (the student's function)
    finally:
        namespace.update(saved)


@probe("test_load_4bit", compare=exact)
def load_4bit_settings(seed):
    """The settings and the notebook's 4-bit model, then a drawn model loaded the same way: which of its
    decoder layers are stored in 4 bits, at which shapes."""
    import random

    import bitsandbytes as bnb

    q = nf4_config()  # noqa: F821 (the student's function)
    drawn = _load_drawn(_drawn_qwen2(random.Random(seed)))
    return {"settings": [bool(q.load_in_4bit), str(q.bnb_4bit_quant_type), bool(q.bnb_4bit_use_double_quant)],
            "compute dtype": str(q.bnb_4bit_compute_dtype), "model": _linear_facts(model4),  # noqa: F821
            "drawn model": _linear_facts(drawn),
            "drawn model's 4-bit layers": sorted([n, m.in_features, m.out_features] for n, m in drawn.named_modules()
                                                 if isinstance(m, bnb.nn.Linear4bit))}


@probe("test_trained", compare=exact)
def trained_adapter(seed):
    """That training moved the adapter and what it trains, and for drawn lora_B matrices of the trained
    model: their names, shapes and whether they moved."""
    import random

    from peftlab import adapters

    params = dict(result.model.named_parameters())  # noqa: F821 (the notebook's training result)
    moved = [n for n, p in params.items() if "lora_B" in n and float(p.detach().abs().sum()) > 0]
    names = sorted(n for n in params if "lora_B" in n)
    drawn = random.Random(seed + 3).sample(names, min(4, len(names)))
    return {"some lora_B moved": bool(moved), "trainable": int(adapters.count_parameters(result.model).trainable),  # noqa: F821
            "drawn lora_B": [[n, list(params[n].shape), n in moved] for n in drawn]}


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
    # A model of drawn shapes, named by its folder (models.meta_model reads a folder's config.json).
    folder = _drawn_qwen2(rng, weights=False)
    out["GiB of a drawn model"] = [float(base_weight_gib(folder, fmt)) for fmt in ("bfloat16", "nf4")]  # noqa: F821
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
    """The hidden test's split of the prediction, on a fresh copy of the notebook's model and on a drawn model
    loaded the same way; the 10% check on the notebook's model, as the visible test."""
    import random

    import bitsandbytes as bnb
    import torch
    from peftlab import memory

    def split(model):
        n4 = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
        other = sum(p.numel() for p in model.parameters() if not isinstance(p, bnb.nn.Params4bit))
        size = torch.finfo(getattr(torch, compute_dtype)).bits // 8  # noqa: F821
        return {"bytes of the unquantized parameters":
                float(predicted_loaded_bytes(model)) - n4 * memory.nf4_bytes_per_param(True),  # noqa: F821
                "expected unquantized bytes": float(other * size)}

    fresh = load_4bit()  # noqa: F821
    predicted, real = float(predicted_loaded_bytes(fresh)), float(memory.measured_weights_bytes(fresh))  # noqa: F821
    return {"within 10% of the measured bytes": abs(predicted - real) / real < 0.10, **split(fresh),
            "drawn model": split(_load_drawn(_drawn_qwen2(random.Random(seed + 1))))}


@probe("test_merge", compare=exact)
def merge_comparison(seed):
    """The notebook's comparison of the three merges, and drawn linear layers of a fresh `merge_right()`:
    their kind (a 4-bit layer is a subclass of nn.Linear), dtype and shape."""
    import random

    import torch

    right, original, naive = (merges[k] for k in ("dequantized base (right)", "original 16-bit W", "4-bit weights"))  # noqa: F821
    merged = merge_right()  # noqa: F821 (the student's function)
    layers = {n: m for n, m in merged.named_modules() if isinstance(m, torch.nn.Linear)}
    drawn = random.Random(seed + 2).sample(sorted(layers), min(4, len(layers)))
    return {"right merge has 4-bit layers": int(right["four_bit_layers"]) > 0,
            "right merge is a peft model": bool(right["peft"]),
            "right merge closest": float(right["logit_error"]) < float(naive["logit_error"])
            and float(right["logit_error"]) < float(original["logit_error"]),
            "drawn layers of a fresh right merge": [[n, type(layers[n]).__name__, str(layers[n].weight.dtype),
                                                     list(layers[n].weight.shape)] for n in drawn]}
