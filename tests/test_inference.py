"""Session 5 (inference speed and memory): the measurements on the tiny model, and the notebook headless.

The measurements must return well-formed records and the variants must
compute the same thing: the merged model the unmerged one's greedy tokens, a
mixed batch each adapter's own rows, merge + unmerge the weights it started
from (within the stated rounding). Bad input fails with a message naming the
argument. No speed is asserted: timings only have to be positive numbers.
"""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import run_session_notebook
from peftlab import inference as inf
from peftlab import models, smollm
from peftlab.config import preset

NOTEBOOK = Path(__file__).resolve().parents[1] / "sessions" / "05_inference" / "session05_inference.ipynb"
NAMES = ["one", "two", "three"]


@pytest.fixture(scope="module")
def served(tiny_dir, tmp_path_factory):
    """The tiny model with three untrained adapters (A and B random), float32, and its tokenizer."""
    config = preset("shakespeare-tiny", output_dir=str(tmp_path_factory.mktemp("served")))
    return inf.load_served(config, names=NAMES), models.load_tokenizer(config.model_name)


@pytest.fixture(scope="module")
def variants(served):
    model, _ = served
    return inf.build_variants(model, NAMES)


def test_adapters_are_loaded_and_differ(served):
    """Routing tests prove something only if the adapters give different logits."""
    model, tokenizer = served
    ids = inf.prompt_ids(tokenizer, 2, 8)
    logits = []
    with torch.no_grad():
        for name in ("one", "two"):
            model.set_adapter(name)
            logits.append(model(input_ids=ids).logits)
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    model.set_adapter("one")
    assert set(NAMES) <= set(model.peft_config)
    assert (logits[0] - logits[1]).abs().max() > 1e-3 and (logits[0] - base).abs().max() > 1e-3


def test_prompts_have_fixed_length_and_differ_by_row(tokenizer):
    ids = inf.prompt_ids(tokenizer, 4, 12)
    assert ids.shape == (4, 12) and len({tuple(r) for r in ids.tolist()}) == 4


def test_measure_returns_well_formed_records(served, variants):
    _, tokenizer = served
    recs = inf.measure(variants, tokenizer, batch_sizes=[1, 3], use_cache=(True, False), prompt_tokens=6,
                       new_tokens=4, repeats=2, warmup=1, no_cache_batch_sizes=[1], progress=False)
    cells = {(r["variant"], r["batch_size"], r["use_cache"]) for r in recs}
    assert cells == {(v, b, True) for v in inf.VARIANTS for b in (1, 3)} | {(v, 1, False) for v in inf.VARIANTS}
    for r in recs:
        for key in ("tokens_per_s", "first_token_ms", "per_token_ms", "total_s"):
            s = r[key]
            assert 0 < s["min"] <= s["median"] <= s["max"] and math.isfinite(s["max"]), (key, r)
        assert len(r["gap_ms_by_position"]) == 3 and r["repeats"] == 2 and r["new_tokens"] == 4
    ups = inf.speedups(recs)
    assert {u["variant"] for u in ups} == {"merged", "mixed"} and len(ups) == 6
    assert all(u["speed-up vs unmerged"] > 0 for u in ups)
    assert list(inf.table(recs).columns)[:4] == ["variant", "batch", "KV cache", "tokens/s"]


def test_timed_generate_makes_exactly_the_asked_tokens(served):
    model, tokenizer = served
    eos = tokenizer.eos_token_id
    res = inf.timed_generate(model, inf.prompt_ids(tokenizer, 2, 5), 7, pad_token_id=tokenizer.pad_token_id)
    assert res["tokens"].shape == (2, 7) and len(res["gaps_s"]) == 6
    assert eos not in res["tokens"].tolist() or eos is None  # min_new_tokens holds EOS back


def test_merged_and_unmerged_greedy_outputs_agree(served, variants):
    _, tokenizer = served
    agree = inf.merged_agreement(variants, inf.prompt_ids(tokenizer, 3, 8), new_tokens=8)
    assert all(agree["rows_equal"]) and agree["token_agreement"] == 1.0
    assert agree["max_logit_gap"] < 1e-4 * max(1.0, agree["max_logit"])  # float32: rounding only
    assert not hasattr(variants["merged"].model, "peft_config")  # a plain model, the base's shapes
    base = sum(p.numel() for n, p in variants["unmerged"].model.named_parameters() if "lora_" not in n)
    assert variants["merged"].model.num_parameters() == base


def test_mixed_batch_rows_equal_single_adapter_runs(served):
    model, tokenizer = served
    names = ["one", "two", "three", "__base__", "two"]
    res = inf.mixed_agreement(model, inf.prompt_ids(tokenizer, 5, 8), names, new_tokens=6)
    assert all(res["rows_equal"]), res
    assert res["max_logit_gap"] < 1e-4 * res["max_logit"], res  # float32: the same sums, grouped differently
    assert len({tuple(r) for r in res["mixed"]}) > 1  # the rows really went different ways
    assert model.active_adapter == "one"


# Tolerances. Merging rounds W0 + dW to the weight format, unmerging rounds (W0 + dW) - dW again: each rounding
# errs by at most half a step of the format at that magnitude, so together by at most one step at the largest
# weight before or after merging, max(|W0|, |W0 + dW|): 2^-23 of it in float32 (checked with a 4x margin for the accumulation in B @ A),
# 2^-7 of it in bfloat16 (8 significant bits).
@pytest.mark.parametrize("dtype, steps", [(torch.float32, 4 * 2.0**-23), (torch.bfloat16, 2.0**-7)])
def test_merge_then_unmerge_restores_weights_within_rounding(served, dtype, steps):
    import copy

    model, tokenizer = served
    clone = copy.deepcopy(model).to(dtype)
    layers = inf._lora_layers(clone, "two")
    w0 = {n: m.get_base_layer().weight.detach().clone() for n, m in layers.items()}
    with torch.no_grad():
        merged_max = max(max(float((w0[n].float() + m.get_delta_weight("two").float()).abs().max()),
                             float(w0[n].float().abs().max())) for n, m in layers.items())
    res = inf.merge_roundtrip(clone, "two", inf.prompt_ids(tokenizer, 2, 8), rounds=3)
    assert res["dtype"] == str(dtype).removeprefix("torch.") and res["layers"] == len(layers) > 0
    assert [r["round"] for r in res["rounds"]] == [1, 2, 3]
    tolerance = steps * merged_max
    assert all(r["max_abs_weight_error"] <= tolerance for r in res["rounds"]), (tolerance, res["rounds"])
    assert res["delta_relative_norm"] > 0.01  # the adapter changes the weights, so merging is not a no-op
    for n, m in layers.items():  # the served model got its exact weights back
        assert torch.equal(m.get_base_layer().weight, w0[n])
    assert clone.active_adapter == "one"


def test_bfloat16_roundtrip_leaves_an_error_float32_does_not(served):
    import copy

    model, tokenizer = served
    ids = inf.prompt_ids(tokenizer, 2, 8)
    f32 = inf.merge_roundtrip(model, "one", ids)
    b16 = inf.merge_roundtrip(copy.deepcopy(model).to(torch.bfloat16), "one", ids)
    assert b16["max_abs_weight_error"] > 100 * f32["max_abs_weight_error"]
    assert b16["max_logit_change"] > f32["max_logit_change"]


def test_cache_curve_has_a_gap_per_token_with_and_without_cache(served, variants):
    _, tokenizer = served
    curve = inf.cache_curve(variants["merged"], tokenizer, new_tokens=5, prompt_tokens=4, repeats=1)
    assert len(curve["on"]["gap_ms"]) == len(curve["off"]["gap_ms"]) == 4
    assert all(g > 0 for g in curve["on"]["gap_ms"] + curve["off"]["gap_ms"])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m, t, v: inf.measure(v, t, batch_sizes=[0], progress=False), "batch_sizes=.*>= 1"),
        (lambda m, t, v: inf.measure(v, t, batch_sizes=[], progress=False), "batch_sizes"),
        (lambda m, t, v: inf.measure(v, t, batch_sizes=[2.5], progress=False), "batch_sizes"),
        (lambda m, t, v: inf.measure(v, t, repeats=0, progress=False), "repeats"),
        (lambda m, t, v: inf.build_variants(m, ["one", "pirate"]), r"\['pirate'\] not loaded.*loaded: \["),
        (lambda m, t, v: inf.build_variants(m, ["one"], variants=["quantized"]), "variants.*unknown"),
        (lambda m, t, v: inf.mixed_agreement(m, inf.prompt_ids(t, 2, 4), ["one", "nope"]), "'nope'"),
        (lambda m, t, v: inf.mixed_agreement(m, inf.prompt_ids(t, 2, 4), ["one"]), "one name per row"),
        (lambda m, t, v: inf.merge_roundtrip(m, "missing", inf.prompt_ids(t, 1, 4)), "missing"),
        (lambda m, t, v: inf.timed_generate(m, inf.prompt_ids(t, 1, 4), 0), "new_tokens=0"),
        (lambda m, t, v: inf.speedups([], baseline="unmerged"), "baseline"),
        (lambda m, t, v: inf.merged_agreement({"mixed": v["mixed"]}, inf.prompt_ids(t, 1, 4)), "'merged'"),
        (lambda m, t, v: inf.format_run("tiny-qwen2", "int3"), "format 'int3'"),
    ],
)
def test_bad_input_gives_a_clear_error(served, variants, call, match):
    model, tokenizer = served
    with pytest.raises(inf.InferenceError, match=match):
        call(model, tokenizer, variants)


def test_adapter_names_on_a_model_without_adapters(tiny_model):
    with pytest.raises(inf.InferenceError, match="holds no adapters"):
        inf.check_adapter_names(tiny_model, ["one"])


def test_memory_by_format_in_fresh_processes(tiny_dir):
    rows = {r["format"]: r for r in inf.memory_by_format("tiny-qwen2", batch_size=2, new_tokens=3, progress=False)}
    assert set(rows) == set(inf.FORMATS)
    f32, b16 = rows["float32"], rows["bfloat16"]
    # 4 bytes against 2 per parameter (buffers such as rotary frequencies stay float32 in both)
    assert 1.9 < f32["weights_bytes"] / b16["weights_bytes"] <= 2.0
    assert abs(f32["weights_bytes"] / f32["predicted_weights_bytes"] - 1) < 0.01
    for r in rows.values():
        if "skipped" in r:
            assert r["format"] == "nf4" and "bitsandbytes" in r["skipped"]
            continue
        assert r["process_peak_bytes"] >= r["generate_peak_bytes"] > 0 and r["tokens_per_s"] > 0
    if "skipped" not in rows["nf4"]:
        assert rows["nf4"]["weights_bytes"] < b16["weights_bytes"]


def test_gpu_prediction_is_labelled_and_grows_with_the_model():
    rows = inf.gpu_prediction(batch_size=4, tokens=256)
    assert all("prediction" in r["kind"] for r in rows)
    assert [r["bf16_weights_bytes"] for r in rows] == sorted(r["bf16_weights_bytes"] for r in rows)
    assert all(r["nf4_weights_bytes"] < r["bf16_weights_bytes"] / 2 for r in rows)  # embeddings stay 16-bit
    # Qwen2.5-7B: 28 layers, 4 KV heads of 128 dims, bf16: 2 * 28 * 4 * 128 * 2 = 57,344 bytes per token
    assert inf.kv_cache_bytes("Qwen/Qwen2.5-7B-Instruct", 1, 1) == 57_344


def test_plots_are_written(served, variants, tmp_path):
    _, tokenizer = served
    recs = inf.measure(variants, tokenizer, batch_sizes=[1, 2], use_cache=(True, False), prompt_tokens=4,
                       new_tokens=3, repeats=1, warmup=0, progress=False)
    inf.plot_throughput(recs, tmp_path / "t.png")
    inf.plot_cache_curve(inf.cache_curve(variants["unmerged"], tokenizer, new_tokens=3, prompt_tokens=4, repeats=1),
                         tmp_path / "c.png")
    assert (tmp_path / "t.png").stat().st_size > 1000 and (tmp_path / "c.png").stat().st_size > 1000


# ------------------------------------------------------------------- notebook
RECORD_KEYS = {"config", "versions", "git_commit", "hardware", "wall_s", "load_average_start", "torch_threads",
               "adapters", "speed", "speedups", "cache_curve", "merged_agreement", "mixed_agreement",
               "merge_roundtrip", "memory", "gpu_prediction"}


def test_session05_headless_on_tiny_model(tiny_dir, tmp_path):
    out = tmp_path / "run"
    run_session_notebook(NOTEBOOK, tmp_path, preset="shakespeare-tiny", batch_sizes=[1, 2], no_cache_batch_sizes=[1],
                         prompt_tokens=6, new_tokens=4, repeats=1, curve_tokens=6, roundtrip_rounds=2,
                         memory_batch_size=2, output_dir=str(out))
    record = json.loads((out / "record.json").read_text())
    assert RECORD_KEYS <= set(record)
    cells = {(r["variant"], r["batch_size"], r["use_cache"]) for r in record["speed"]}
    assert cells == {(v, b, True) for v in inf.VARIANTS for b in (1, 2)} | {(v, 1, False) for v in inf.VARIANTS}
    assert all(record["merged_agreement"]["rows_equal"]) and all(record["mixed_agreement"]["rows_equal"])
    rt = {r["dtype"]: r for r in record["merge_roundtrip"]}
    assert set(rt) == {"float32", "bfloat16"}
    assert rt["bfloat16"]["max_abs_weight_error"] > rt["float32"]["max_abs_weight_error"]
    assert {m["format"] for m in record["memory"]} == set(inf.FORMATS)
    assert len(record["cache_curve"]["off"]["gap_ms"]) == 5
    assert all("prediction" in r["kind"] for r in record["gpu_prediction"])
    assert (out / "throughput.png").stat().st_size > 1000 and (out / "kv_cache.png").stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.skipif(not smollm.is_available(), reason=f"needs {smollm.INSTALL} (make venv installs it)")
def test_session05_on_smollm(tmp_path):
    """The notebook end to end on the real model (its CPU default), on a small grid: every measurement is
    recorded, the variants agree with each other, and the formats' weights shrink as the formats say."""
    out = tmp_path / "run"
    run_session_notebook(NOTEBOOK, tmp_path, batch_sizes=[1, 4], no_cache_batch_sizes=[1], prompt_tokens=16,
                         new_tokens=8, repeats=1, curve_tokens=8, roundtrip_rounds=2, memory_batch_size=2,
                         output_dir=str(out))
    record = json.loads((out / "record.json").read_text())
    assert RECORD_KEYS <= set(record)
    assert record["config"]["model_name"] == "smollm2-135m"
    assert {(r["variant"], r["batch_size"], r["use_cache"]) for r in record["speed"]} == (
        {(v, b, True) for v in inf.VARIANTS for b in (1, 4)} | {(v, 1, False) for v in inf.VARIANTS})
    assert all(r["tokens_per_s"]["median"] > 0 for r in record["speed"])
    # The dtype follows the CPU (bfloat16 where it computes it natively). In bfloat16 the merged weights, and a
    # mixed batch's sub-batches, round differently, so a near-tie can flip one token and the rest of its row
    # with it: judge both by their first-step logits (a few bf16 steps of the largest), not by tokens.
    for agree in (record["merged_agreement"], record["mixed_agreement"]):
        assert agree["max_logit_gap"] < 0.05 * agree["max_logit"], agree
    assert any(record["merged_agreement"]["rows_equal"]), record["merged_agreement"]
    weights = {m["format"]: m["weights_bytes"] for m in record["memory"]}
    assert weights["float32"] > 1.9 * weights["bfloat16"] > 1.9 * 1.5 * weights["nf4"]
    for m in record["memory"]:
        assert abs(m["predicted_weights_bytes"] / m["weights_bytes"] - 1) < 0.15, m
