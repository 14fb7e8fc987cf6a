"""Session 4 (PEFT methods compared): every method trains on the tiny model and leaves a record with the
right trainable count; AdaLoRA's allocation fits its budget; table, plots, bench and notebook run.

The tiny model learns nothing in two steps, so these tests assert structure and counts, never quality
or timings.
"""

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import run_session_notebook
from peftlab import adapters, methods, models
from peftlab.config import ConfigError, preset

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "sessions" / "04_methods" / "session04_methods.ipynb"
STEPS = 2


@pytest.fixture(scope="module")
def records(tmp_path_factory, tiny_dir):
    out = tmp_path_factory.mktemp("methods")
    base = preset("shakespeare-tiny", max_train_samples=8)
    recs = methods.compare(base, steps=STEPS, output_dir=out, n_generate=2, max_new_tokens=4, progress=False,
                           log=lambda *a: None)
    return {r["method"]: r for r in recs}, out, base


def test_every_method_trains_and_writes_a_record(records):
    recs, out, _ = records
    assert list(recs) == list(methods.METHODS)
    for name, rec in recs.items():
        on_disk = json.loads((out / f"{name}.json").read_text())
        assert on_disk["method"] == name and on_disk["steps"] == STEPS, name
        assert on_disk["config"]["max_steps"] == STEPS and on_disk["config"]["seed"] == 42
        assert 0 < rec["trainable"] <= rec["total"] and rec["peak_bytes"] > 0 and rec["step_s"] > 0
        assert rec["perplexity"] > 1 and 0 <= rec["chrf"] <= 100 and 0 <= rec["style_share"] <= 1
        assert len(rec["samples"]) == 2 and len(rec["train_losses"]) == STEPS
    assert recs["full"]["trainable"] == recs["full"]["total"]
    assert recs["rslora"]["config"]["use_rslora"] and not recs["lora"]["config"]["use_rslora"]
    # same seed, same data, same steps: LoRA and rsLoRA see the same first batch from the same weights
    assert recs["lora"]["train_loss_first"] == pytest.approx(recs["rslora"]["train_loss_first"], rel=1e-5)


def _peft_count(base, name):
    """peft's own count for the method, on a freshly built model (not through peftlab.train)."""
    from peft import get_peft_model

    cfg = methods.method_config(base, name, 10, "unused")
    model = models.load_model(cfg)
    if cfg.method == "full":
        return model.num_parameters()
    return get_peft_model(model, adapters.peft_config(cfg, total_step=10)).get_nb_trainable_parameters()[0]


def test_trainable_counts_match_peft_and_the_formulas(records, tiny_dir):
    recs, _, base = records
    for name in ("full", "lora", "dora", "ia3", "prefix", "ptuning_v2", "prompt"):
        assert recs[name]["trainable"] == _peft_count(base, name), name
    cfg = models.model_config("tiny-qwen2")
    h, layers, v = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)  # (B, heads_kv * head_dim): Qwen2 uses GQA
    r, n = base.r, base.num_virtual_tokens
    per_layer = {"q_proj": (h, h), "v_proj": (h, kv), "o_proj": (h, h)}  # (d_in, d_out)
    assert base.target_modules == ["q_proj", "v_proj", "o_proj"]
    assert recs["lora"]["trainable"] == layers * sum(r * (i + o) for i, o in per_layer.values())
    # DoRA adds one magnitude per output row of every adapted weight
    assert recs["dora"]["trainable"] == recs["lora"]["trainable"] + layers * sum(o for _, o in per_layer.values())
    assert recs["prompt"]["trainable"] == n * h
    assert recs["ptuning_v2"]["trainable"] == n * layers * 2 * kv  # keys and values of n tokens per layer
    # prefix: embedding (n, kv), then Linear(kv, kv), tanh, Linear(kv, layers * 2 * kv), with biases
    assert recs["prefix"]["trainable"] == n * kv + kv * kv + kv + kv * layers * 2 * kv + layers * 2 * kv
    # peft's IA3 on Qwen2: the outputs of q_proj and v_proj, the input of down_proj
    assert recs["ia3"]["trainable"] == layers * (h + kv + cfg.intermediate_size)
    assert v * h < recs["full"]["trainable"]


def test_what_peft_builds_for_the_deep_prompt_methods(records):
    recs, _, _ = records
    pt = recs["ptuning_v2"]["trainable_tensors"]
    pre = recs["prefix"]["trainable_tensors"]
    assert len(pt) == 1 and next(iter(pt)).endswith("prompt_encoder.default.embedding.weight")
    assert any(k.endswith("transform.0.weight") for k in pre) and any(k.endswith("transform.2.weight") for k in pre)


def test_adalora_allocation_fits_its_budget(records):
    recs, _, base = records
    alloc = recs["adalora"]["adalora"]
    n_modules = len(alloc["layers"]) * len(alloc["modules"])
    assert alloc["layers"] == [0, 1] and alloc["modules"] == ["q_proj", "v_proj", "o_proj"]
    assert len(alloc["ranks"]) == 2 and all(len(row) == 3 for row in alloc["ranks"])
    assert alloc["budget"] == base.r * n_modules == sum(map(sum, alloc["ranks"])) == alloc["allocated"]
    assert all(0 <= v <= alloc["init_r"] for row in alloc["ranks"] for v in row)
    assert all(z <= k for zr, kr in zip(alloc["nonzero_E"], alloc["ranks"]) for z, k in zip(zr, kr))
    assert alloc["tfinal"] >= 1 and alloc["total_step"] == STEPS


def test_table_and_plots(records, tmp_path):
    recs, out, _ = records
    read = methods.read_records(out)
    assert [r["method"] for r in read] == list(methods.METHODS)
    df = methods.table(read)
    assert list(df.index) == [m.label for m in methods.METHODS.values()]
    assert df.loc["full fine-tuning", "trainable %"] == pytest.approx(100)
    md = methods.markdown_table(read)
    assert md.count("\n") == len(read) + 1 and "| prompt tuning |" in md
    assert methods.plot_methods(read, tmp_path / "m.png") is not None and (tmp_path / "m.png").stat().st_size > 1000
    methods.plot_allocation(recs["adalora"]["adalora"], tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda b: methods.method_config(b, "lorax", 4, "x"), "unknown 'lorax'; choose from full, lora"),
        (lambda b: methods.method_config(b, "lora", 0, "x"), "steps=0: give a positive number"),
        (lambda b: methods.method_config(b, "adalora", 1, "x"), "AdaLoRA needs at least 2 steps"),
        (lambda b: methods.compare(b, names=[], steps=2), r"methods=\[\]"),
        (lambda b: methods.compare(b, names="lora,bitfit", steps=2), "unknown 'bitfit'"),
        (lambda b: methods.compare(b, names=["lora"], steps=2, learning_rates={"lroa": 1e-3}),
         r"learning_rates: unknown method\(s\) 'lroa'"),
    ],
)
def test_bad_input_is_named(call, match, tiny_dir):
    base = preset("shakespeare-tiny")
    with pytest.raises(ConfigError, match=match):
        call(base)


def test_bad_records_are_named(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        methods.table([])
    with pytest.raises(ValueError, match="records lack"):
        methods.table([{"label": "x"}])
    with pytest.raises(FileNotFoundError, match="no method records"):
        methods.read_records(tmp_path)


def _bench(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_methods_smoke_and_report(tiny_dir, tmp_path, capsys):
    out = tmp_path / "bench" / "methods"
    assert _bench("methods").main(["--size", "smoke", "--methods", "lora,adalora,prompt", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"] == ["lora", "adalora", "prompt"] and summary["steps"] == 2
    assert summary["load_average_at_start"] and summary["cpu_count"] >= 1
    assert (out / "methods.png").stat().st_size > 1000 and (out / "adalora.png").stat().st_size > 1000
    assert "| AdaLoRA |" in (out / "table.md").read_text()
    assert "records in" in capsys.readouterr().out

    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- performance:start -->\nkept\n<!-- performance:end -->\n\n"
                      "<!-- methods:start -->\nold\n<!-- methods:end -->\n")
    assert _bench("report").main(["--bench", str(tmp_path / "bench"), "--readme", str(readme),
                                  "--sections", "methods"]) == 0
    text = readme.read_text()
    assert "old" not in text and "kept" in text and "| prompt tuning |" in text and "budget" in text


def test_bench_rejects_unknown_method(tiny_dir, tmp_path):
    with pytest.raises(ConfigError, match="unknown 'dorra'"):
        _bench("methods").main(["--size", "smoke", "--methods", "dorra", "--out", str(tmp_path)])


def test_session04_headless_on_tiny_model(tiny_dir, tmp_path):
    out = tmp_path / "run"
    run_session_notebook(NOTEBOOK, tmp_path, preset="shakespeare-tiny", steps=2, n_generate=2, max_new_tokens=4,
                         overrides={"max_train_samples": 8}, output_dir=str(out))
    summary = json.loads((out / "record.json").read_text())
    assert [r["method"] for r in summary["records"]] == list(methods.METHODS)
    assert all(r["steps"] == 2 for r in summary["records"])
    ada = summary["adalora"]
    assert sum(map(sum, ada["ranks"])) == ada["budget"]
    assert (out / "methods.png").stat().st_size > 1000 and (out / "adalora.png").stat().st_size > 1000
    assert summary["best"]["chrF"] in {m.label for m in methods.METHODS.values()}
    for name in methods.METHODS:
        assert (out / f"{name}.json").is_file()


def test_findings_name_the_winners_and_say_them():
    samples = [{"reference": "Thou art here.", "output": "Thou art here."},
               {"reference": "Hast thou eaten?", "output": "Have you eaten?"}]

    def rec(method, label, chrf, ppl, trainable, step_s, peak):
        return {"method": method, "label": label, "chrf": chrf, "perplexity": ppl, "trainable": trainable,
                "trainable_percent": trainable / 1e4, "step_s": step_s, "peak_bytes": peak * 2**20,
                "n_generate": 2, "samples": samples}

    records = [rec("full", "full fine-tuning", 50.0, 9.0, 10_000, 2.0, 300),
               rec("lora", "LoRA", 55.0, 8.5, 100, 1.0, 100),
               rec("prompt", "prompt tuning", 40.0, 12.0, 10, 0.5, 90)]
    found = methods.findings(records, steps=8)
    assert found["reference"] == "lora" and set(found["by"]) == {"full", "lora", "prompt"}
    assert found["best"] == {"chrF": "LoRA", "perplexity": "LoRA", "fewest parameters": "prompt tuning",
                             "fastest step": "prompt tuning"}
    assert [p["method"] for p in found["paired"]] == ["full fine-tuning", "prompt tuning"]
    assert found["lines"] == [
        "At 8 equal steps: best chrF LoRA (55.0), lowest held-out perplexity LoRA (8.50), fewest trainable "
        "parameters prompt tuning (10, 0.0010%), fastest step prompt tuning (0.50 s).",
        "Beyond noise against LoRA: none of 2 methods, on 2 sentences.",  # same outputs: no difference
        "Full fine-tuning trains 100x the parameters of LoRA and peaked at 300 MiB against 100 MiB (2.00x the step time).",
        "Held-out perplexity of the prompt methods: prompt tuning 12.00; LoRA: 8.50.",
    ]
    alone = methods.findings(records[2:], steps=8)
    assert alone["reference"] == "prompt" and alone["paired"] == [] and len(alone["lines"]) == 3
