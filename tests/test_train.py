"""Training on the tiny model: loss falls, records, resume, AdaLoRA, QLoRA, every method."""

import json

import pytest
import torch
from peftlab import adapters, casestudy, models, train
from peftlab.config import RunConfig, preset


def _cfg(tmp_path, **kw):
    base = dict(model_name="tiny-qwen2", r=4, lora_alpha=16, learning_rate=2e-3, max_train_samples=16,
                per_device_train_batch_size=4, gradient_accumulation_steps=1, num_train_epochs=2,
                output_dir=str(tmp_path / "run"), seed=0)
    base.update(kw)
    return RunConfig(**base)


def test_case_study_writes_everything_and_improves(tiny_dir, tmp_path):
    cfg = preset("shakespeare-tiny", output_dir=str(tmp_path / "cs"), num_train_epochs=2)
    lines = []
    record = casestudy.run(cfg, progress=False, log=lines.append)
    out = tmp_path / "cs"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "loss.png").stat().st_size > 1000
    on_disk = json.loads((out / "record.json").read_text())
    for key in ("config", "versions", "git_commit", "hardware", "wall_s", "peak_memory_bytes", "params", "before", "after"):
        assert key in on_disk
    assert on_disk["versions"]["peft"] and on_disk["peak_memory_bytes"] > 0
    assert record["after"]["perplexity"] < record["before"]["perplexity"]
    assert record["params"]["trainable"] == 2 * (512 + 384 + 512)
    losses = [loss for _, loss in record["history"]["train"]]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4  # single batches are noisy: compare means
    assert "held-out ppl" in lines[-1] and "before" in lines[-1]
    paced = [line for line in lines if line.startswith("pace")]
    assert len(paced) == 1 and "s a step on this machine (cpu (" in paced[0], lines
    assert record["pace"]["s_per_step"] > 0 and record["pace"]["projected_wall_s"] > 0


class _State:
    def __init__(self, max_steps):
        self.global_step, self.max_steps = 0, max_steps


def test_pace_projects_from_the_steps_after_the_first_and_warns_past_the_budget():
    from peftlab.callbacks import Pace

    times = iter([0.0, 100.0, 109.0])  # started; the ends of steps 1 (it paid the set-up) and 4
    lines = []
    pace = Pace(log=lines.append, after_s=40.0, budget_s=360.0, where="cpu (AVX2)")
    pace.clock = lambda: next(times)
    pace.started = pace.clock()
    state = _State(max_steps=110)
    for step in range(1, 5):
        state.global_step = step
        pace.on_step_end(None, state, None)
    assert pace.s_per_step == pytest.approx(3.0)
    # 109 s so far, 106 steps at 3 s left, 40 s of evaluation after training
    assert pace.projected_s == pytest.approx(109 + 318 + 40)
    assert len(lines) == 1 and "3.00 s a step on this machine (cpu (AVX2))" in lines[0]
    assert "5.3 min of training left" in lines[0] and "the whole run about 7.8 min" in lines[0]
    assert "more than the 6.0 min" in lines[0] and "num_train_epochs" in lines[0]

    fast = Pace(log=lines.append, budget_s=360.0)
    times = iter([0.0, 5.0, 8.0])
    fast.clock = lambda: next(times)
    fast.started = fast.clock()
    for step in range(1, 5):
        state.global_step = step
        fast.on_step_end(None, state, None)
    assert len(lines) == 2 and "more than" not in lines[1] and "the whole run about 1.9 min" in lines[1]


def test_total_steps_matches_trainer(tiny_dir, tmp_path):
    cfg = _cfg(tmp_path, max_train_samples=10, per_device_train_batch_size=3, gradient_accumulation_steps=2,
               num_train_epochs=3, eval_each_epoch=False)
    res = train.train(cfg, progress=False)
    assert res.trainer.state.global_step == res.total_steps == train.total_optimizer_steps(cfg, 10)


def test_adalora_really_reallocates(tiny_dir, tmp_path):
    cfg = _cfg(tmp_path, method="adalora", r=2, adalora_init_r=6, adalora_tinit=2, adalora_tfinal=2,
               max_steps=10, eval_each_epoch=False, target_modules=["q_proj", "v_proj"])
    res = train.train(cfg, progress=False)
    assert res.adalora_calls == 10
    pattern = res.model.peft_config["default"].rank_pattern
    assert pattern, "update_and_allocate never produced a rank pattern"
    kept = [int(sum(mask)) for mask in pattern.values()]
    # the budget is r per module on average: pruned from init_r=6 down to 2 * n_modules in total
    assert sum(kept) == 2 * len(kept) and max(kept) <= 6


def test_resume_from_checkpoint(tiny_dir, tmp_path):
    cfg = _cfg(tmp_path, num_train_epochs=2, eval_each_epoch=False)
    first = train.train(cfg, progress=False)
    steps = first.trainer.state.global_step
    more = RunConfig(**{**cfg.to_dict(), "num_train_epochs": 3})
    resumed = train.train(more, progress=False, resume=True)
    assert resumed.trainer.state.global_step == steps * 3 // 2
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        train.train(_cfg(tmp_path / "empty"), progress=False, resume=True)


@pytest.mark.parametrize("method", ["dora", "prefix", "ptuning_v2", "prompt", "ia3", "full"])
def test_every_method_trains(tiny_dir, tmp_path, method):
    cfg = _cfg(tmp_path, method=method, max_steps=3, eval_each_epoch=False, num_virtual_tokens=4)
    res = train.train(cfg, progress=False)
    counts = adapters.count_parameters(res.model)
    assert res.trainer.state.global_step == 3
    assert 0 < counts.trainable <= counts.total
    assert (counts.trainable == counts.total) == (method == "full")
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in res.history.train)


def test_qlora_nf4_on_cpu_trains_and_counts(tiny_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    cfg = _cfg(tmp_path, method="qlora", max_steps=12, eval_each_epoch=False, learning_rate=5e-3,
               target_modules=["q_proj", "v_proj", "o_proj"])
    res = train.train(cfg, progress=False)
    linear_types = {type(m).__name__ for m in res.model.modules() if "Linear4bit" in type(m).__name__}
    assert linear_types, "base was not quantized"
    losses = [loss for _, loss in res.history.train]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    plain = adapters.attach(
        __import__("transformers").AutoModelForCausalLM.from_pretrained(tiny_dir),
        RunConfig(r=4, target_modules=["q_proj", "v_proj", "o_proj"]),
    )
    assert adapters.count_parameters(res.model) == adapters.count_parameters(plain)


def test_qlora_case_study_trains_after_evaluating_the_base(tiny_dir, tmp_path):
    """The case study evaluates the 4-bit base (no gradients) before training it.

    On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights for inference at
    such a pass, and training afterwards failed with an in-place error; the course's
    loader keeps the training layout (models.keep_4bit_trainable_on_cpu).
    """
    pytest.importorskip("bitsandbytes")
    cfg = preset("shakespeare-tiny", method="qlora", num_train_epochs=1, output_dir=str(tmp_path / "cs"))
    record = casestudy.run(cfg, progress=False, log=lambda *a: None)
    assert record["steps"] > 0 and record["after"]["loss"] != record["before"]["loss"]
    model = models.load_model(cfg)
    with torch.no_grad():
        model.eval()(input_ids=torch.tensor([[1, 2, 3]]))
    states = [m.weight.quant_state for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert states and not any(getattr(q, "packing_format_for_cpu", False) for q in states)


def test_qlora_merge_reproduces_the_trained_model(tiny_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    cfg = _cfg(tmp_path, method="qlora", max_steps=4, eval_each_epoch=False, learning_rate=5e-3,
               compute_dtype="float32")
    res = train.train(cfg, progress=False)
    path = adapters.save_adapter(res.model, tmp_path / "qadapter")
    merged = adapters.merge_qlora(cfg, path, dtype=torch.float32)
    assert not hasattr(merged, "peft_config")
    assert not any("4bit" in type(m).__name__ for m in merged.modules())
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    res.model.eval()
    with torch.no_grad():
        trained = res.model(input_ids=ids).logits
        err_right = (merged(input_ids=ids).logits - trained).abs().max()
        naive = adapters.load_adapter(models.load_model(cfg), path).merge_and_unload()
        err_naive = (naive(input_ids=ids).logits - trained).abs().max()
    # The dequantized merge is the trained model up to rounding (bitsandbytes' CPU 4-bit matmul
    # itself differs from a float32 matmul with the dequantized weight by ~1e-2 here); the
    # re-quantized merge is several times further off (0.018 against 0.14 when written).
    assert err_right < 0.05 and err_right * 3 < err_naive


def test_keyword_settings_go_through_the_config(tiny_dir, tmp_path):
    """train(cfg, save_strategy="no") changes the RunConfig, so the record sees what the run did."""
    from peftlab.config import ConfigError

    cfg = _cfg(tmp_path, max_steps=2, eval_each_epoch=False)
    res = train.train(cfg, progress=False, save_strategy="no", train_sampling_strategy="group_by_length")
    assert (res.config.save_strategy, res.config.train_sampling_strategy) == ("no", "group_by_length")
    assert (res.trainer.args.save_strategy, res.trainer.args.train_sampling_strategy) == ("no", "group_by_length")
    assert not list((tmp_path / "run").glob("checkpoint-*"))
    assert cfg.save_strategy == "epoch"  # the caller's config is not mutated
    with pytest.raises(ConfigError, match=r"train\(eval_steps=\.\.\.\): not a RunConfig field"):
        train.train(cfg, progress=False, eval_steps=5)


@pytest.mark.parametrize("method,fewer_logits", [("lora", True), ("dora", True), ("ia3", True), ("full", True),
                                                 ("adalora", False), ("prefix", False), ("prompt", False),
                                                 ("ptuning_v2", False)])
def test_the_loss_from_labelled_positions_equals_transformers_own(tiny_dir, tmp_path, method, fewer_logits):
    """CourseTrainer projects only labelled positions onto the vocabulary: same loss, same gradients."""
    from peftlab import data

    # float32 on every CPU: in bfloat16 the two orders of summation round apart (see the tiny preset)
    res = train.train(_cfg(tmp_path, method=method, max_steps=1, eval_each_epoch=False, num_virtual_tokens=4,
                           save_strategy="no", dtype="float32"), progress=False)
    trainer = res.trainer
    assert trainer.response_logits is fewer_logits
    res.model.eval()  # no dropout: both losses see the same network
    batch = data.make_collator(res.tokenizer)([trainer.train_dataset[i] for i in range(4)])
    labels = batch["labels"]
    keep = train.logits_positions(labels)
    assert 0 < len(keep) < labels.shape[1] - 1  # the prompt is left out
    for n in (None, int((labels[:, 1:] != -100).sum()) + 7):  # the mean, and a count over an accumulated batch
        results = []
        for fewer in (True, False):
            trainer.response_logits = fewer and fewer_logits
            trainer.share_prefix = False
            res.model.zero_grad()
            loss = trainer.compute_loss(res.model, dict(batch), num_items_in_batch=n)
            loss.backward()
            grads = [p.grad.clone() for p in res.model.parameters() if p.requires_grad and p.grad is not None]
            results.append((loss.detach(), grads))
        (ours, our_grads), (theirs, their_grads) = results
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
        assert len(our_grads) == len(their_grads) > 0
        for a, b in zip(our_grads, their_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_training_with_fewer_logits_follows_the_same_losses(tiny_dir, tmp_path, monkeypatch):
    """Four optimizer steps with gradient accumulation, fewer logits and the shared opening run once: the logged
    losses match transformers' own loss."""
    cfg = _cfg(tmp_path, max_steps=4, gradient_accumulation_steps=2, eval_each_epoch=False, save_strategy="no",
               lora_dropout=0.0, dtype="float32")  # bfloat16 rounds the two summation orders apart
    ours = train.train(cfg, progress=False)
    assert ours.trainer.response_logits and ours.trainer.share_prefix
    monkeypatch.setattr(train, "response_logits_supported", lambda model: False)
    theirs = train.train(cfg, progress=False)
    assert not theirs.trainer.response_logits
    assert [s for s, _ in ours.history.train] == [s for s, _ in theirs.history.train]
    for (_, a), (_, b) in zip(ours.history.train, theirs.history.train):
        assert a == pytest.approx(b, rel=1e-4)


@pytest.mark.parametrize("method", ["lora", "dora", "full"])
def test_the_shared_opening_run_once_gives_the_same_loss_and_gradients(tiny_dir, tmp_path, method):
    """The batch's shared opening tokens (system prompt, instruction) run once and their cache is repeated:
    the loss and every gradient equal those of running each row whole, with and without padding."""
    from peftlab import data

    res = train.train(_cfg(tmp_path, method=method, max_steps=1, eval_each_epoch=False, lora_dropout=0.0,
                           save_strategy="no", dtype="float32"), progress=False)
    trainer = res.trainer
    assert trainer.response_logits and trainer.share_prefix
    res.model.eval()
    rows = [trainer.train_dataset[i] for i in range(4)]
    assert len({len(r["input_ids"]) for r in rows}) > 1  # rows of different lengths: the batch is padded
    batch = data.make_collator(res.tokenizer)(rows)
    keep = train.logits_positions(batch["labels"])
    shared = train.shared_prefix(batch, int(keep[0]))
    assert train.MIN_SHARED_PREFIX <= shared <= int(keep[0])
    first_label = int((batch["labels"][0] != -100).nonzero()[0])
    assert (batch["input_ids"][:, :shared] == batch["input_ids"][0, :shared]).all()
    assert shared < first_label
    for n in (None, int((batch["labels"][:, 1:] != -100).sum()) + 3):
        results = []
        for share in (True, False):
            trainer.share_prefix = share
            res.model.zero_grad()
            loss = trainer.compute_loss(res.model, dict(batch), num_items_in_batch=n)
            loss.backward()
            results.append((loss.detach(), [p.grad.clone() for p in res.model.parameters()
                                            if p.requires_grad and p.grad is not None]))
        (ours, our_grads), (theirs, their_grads) = results
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
        assert len(our_grads) == len(their_grads) > 0
        for a, b in zip(our_grads, their_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_rows_are_run_whole_where_sharing_would_change_the_result(tiny_dir, tmp_path):
    """Dropout draws different noise per row, gradient checkpointing turns the cache off, rows that differ
    from the first token or a batch of one share nothing: each keeps the whole-row forward."""
    res = train.train(_cfg(tmp_path, max_steps=1, eval_each_epoch=False, lora_dropout=0.1, save_strategy="no"),
                      progress=False)
    assert res.trainer.response_logits and not res.trainer.share_prefix
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]] * 2)
    mask = torch.ones_like(ids)
    assert train.shared_prefix({"input_ids": ids, "attention_mask": mask, "labels": ids}, 11) == 11
    assert train.shared_prefix({"input_ids": ids, "attention_mask": mask, "labels": ids}, 4) == 0  # too few
    assert train.shared_prefix({"input_ids": ids[:1], "attention_mask": mask[:1], "labels": ids[:1]}, 11) == 0
    other = ids.clone()
    other[1, 0] = 99
    assert train.shared_prefix({"input_ids": other, "attention_mask": mask, "labels": other}, 11) == 0
    left_padded = mask.clone()
    left_padded[1, :3] = 0
    assert train.shared_prefix({"input_ids": ids, "attention_mask": left_padded, "labels": ids}, 11) == 0
    assert train.shared_prefix({"input_ids": ids, "attention_mask": mask, "labels": ids,
                                "position_ids": ids}, 11) == 0  # inputs it does not know how to split
    res.model.gradient_checkpointing_enable()
    assert not train.prefix_sharing_supported(res.model)


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_held_out_losses_from_scored_positions_equal_the_full_logits(tiny_dir, tmp_path, method, monkeypatch):
    """metrics.example_losses projects only scored positions where the model allows it: the same per-row
    sums and counts as from every position's logits (prompt tuning keeps the full logits)."""
    from peftlab import metrics

    res = train.train(_cfg(tmp_path, method=method, max_steps=1, eval_each_epoch=False, num_virtual_tokens=4,
                           save_strategy="no", dtype="float32"), progress=False)
    ds = res.trainer.eval_dataset if res.trainer.eval_dataset is not None else res.trainer.train_dataset
    ours = metrics.example_losses(res.model, ds, res.tokenizer, batch_size=3)
    monkeypatch.setattr(metrics, "response_logits_supported", lambda model: False)
    theirs = metrics.example_losses(res.model, ds, res.tokenizer, batch_size=3)
    assert len(ours) == len(theirs) == len(ds) > 3
    assert [c for _, c in ours] == [c for _, c in theirs] and all(c > 0 for _, c in ours)
    for (a, _), (b, _) in zip(ours, theirs):
        assert a == pytest.approx(b, rel=1e-5)
