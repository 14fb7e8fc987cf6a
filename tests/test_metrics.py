"""Metrics and the peak-memory tracker on inputs whose answers are known without running them."""

import math
import time

import psutil
import pytest
import torch
from peftlab import measure, metrics


@pytest.mark.parametrize("loss,ppl", [(0.0, 1.0), (math.log(10), 10.0), (2.245, 9.4404)])
def test_perplexity_is_exp_of_the_loss(loss, ppl):
    assert metrics.perplexity_from_loss(loss) == pytest.approx(ppl, abs=1e-4)


def test_a_model_that_knows_nothing_has_perplexity_equal_to_its_vocabulary(tiny_model, tokenizer):
    """Zero logits are a uniform guess: every token costs log(V) nats, so the perplexity is V."""
    from peftlab import data

    with torch.no_grad():
        tiny_model.lm_head.weight.zero_()
    rows = data.load_course_data("test").select(range(5))
    tokenized, _ = data.tokenize_dataset(rows, tokenizer, max_length=128)
    vocab = tiny_model.config.vocab_size
    for batch_size in (1, 4):  # token sums, not batch means: the batch size does not matter
        assert metrics.heldout_loss(tiny_model, tokenized, tokenizer, batch_size) == pytest.approx(math.log(vocab))
    assert metrics.heldout_perplexity(tiny_model, tokenized, tokenizer) == pytest.approx(vocab, rel=1e-4)


def test_bleu_and_chrf_on_known_strings():
    same = metrics.bleu_chrf(["Good morrow to thee, fair friend."], ["Good morrow to thee, fair friend."])
    assert same["bleu"] == pytest.approx(100) and same["chrf"] == pytest.approx(100)
    # Six words, the last one wrong: n-gram precisions 5/6, 4/5, 3/4, 2/3, no brevity penalty,
    # BLEU = 100 * (5/6 * 4/5 * 3/4 * 2/3) ** (1/4) = 100 * (1/3) ** 0.25.
    one_off = metrics.bleu_chrf(["a b c d e f"], ["a b c d e g"])
    assert one_off["bleu"] == pytest.approx(100 * (1 / 3) ** 0.25, abs=0.01)
    assert 0 < one_off["chrf"] < 100
    disjoint = metrics.bleu_chrf(["xyz"], ["abc"])
    assert disjoint["bleu"] == pytest.approx(0) and disjoint["chrf"] == pytest.approx(0)
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        metrics.bleu_chrf(["a", "b"], ["a"])


MiB = 2**20
BLOCK = 192 * MiB


def _hold_block(seconds: float = 0.0):
    block = torch.ones(BLOCK // 4, dtype=torch.float32)  # written, so every page is resident
    time.sleep(seconds)
    return float(block[-1])


def test_peak_memory_tracker_sees_a_known_allocation():
    rss_before = psutil.Process().memory_info().rss
    with measure.track_peak_memory("cpu") as peak:
        _hold_block()
    assert peak.source == "process resident peak (VmHWM)"
    # At least the block on top of what was resident before; the slack above it allows for
    # allocator and library noise on a busy machine, not for a second block.
    assert 0.95 * BLOCK <= peak.bytes - rss_before <= BLOCK + 160 * MiB
    assert peak.mib == pytest.approx(peak.bytes / MiB)


def test_peak_memory_tracker_resets_between_phases():
    with measure.track_peak_memory("cpu"):
        _hold_block()
    rss_before = psutil.Process().memory_info().rss
    with measure.track_peak_memory("cpu") as quiet:
        torch.zeros(16)
    assert quiet.bytes - rss_before < BLOCK / 2  # the earlier block is not this phase's peak


def test_peak_memory_tracker_sampling_fallback(monkeypatch):
    monkeypatch.setattr(measure, "_reset_rss_peak", lambda: False)  # as on macOS: no VmHWM reset
    rss_before = psutil.Process().memory_info().rss
    with measure.track_peak_memory("cpu") as peak:
        _hold_block(seconds=2.0)  # the sampler polls every 10 ms
    assert peak.source == "process resident peak (sampled)"
    assert 0.9 * BLOCK <= peak.bytes - rss_before <= BLOCK + 160 * MiB


@pytest.mark.parametrize("share,n", [(0.0, 8), (1.0, 8), (0.5, 8), (0.25, 100), (0.9, 3)])
def test_share_interval_holds_the_share_inside_0_1(share, n):
    from peftlab.metrics import share_interval

    lo, hi = share_interval(share, n)
    assert 0.0 <= lo <= share <= hi <= 1.0
    assert hi - lo > 0  # never a point, even at 0% or 100%
    wide, narrow = share_interval(0.5, 8), share_interval(0.5, 800)
    assert (wide[1] - wide[0]) > 5 * (narrow[1] - narrow[0])  # shrinks like 1/sqrt(n)
    assert share_interval(0.5, 100) == pytest.approx((0.404, 0.596), abs=1e-3)  # Wilson's value
