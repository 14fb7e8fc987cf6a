"""The custom style metric, the copy-the-input baseline, bootstrap CIs and the forgetting probes."""

import pytest
from peftlab import data, metrics


@pytest.mark.parametrize(
    "text, forms",
    [
        ("Tell me wherefore thou dost weep.", ["wherefore", "thou", "dost"]),
        ("'Tis late, and I must hence.", ["'tis"]),
        ("Begone, and ne\u2019er return.", ["begone", "ne'er"]),  # typographic apostrophe
        ("He speaketh truly.", ["speaketh"]),
        ("Tell me why you are crying.", []),
        ("Brush your teeth, Elizabeth.", []),  # words that only end like -eth verbs
        ("The other theme thought through.", []),  # 'thou'/'thee' inside words do not count
    ],
)
def test_archaic_forms(text, forms):
    assert metrics.archaic_forms(text) == forms


def test_style_share_separates_references_from_inputs():
    rows = data.read_rows(data.course_data_path("test"))
    refs = metrics.style_share([r["output"] for r in rows])
    inputs = metrics.style_share(metrics.copy_baseline(rows))
    assert inputs == 0.0
    assert refs == pytest.approx(54 / 82)  # 54 of the 82 references use an archaic form
    with pytest.raises(ValueError):
        metrics.style_share([])


def test_copy_baseline_scores_high_on_overlap_metrics():
    rows = data.read_rows(data.course_data_path("test"))
    table = metrics.quality_table({"perfect": [r["output"] for r in rows]}, rows, n_bootstrap=200)
    by = {t["system"]: t for t in table}
    copy, perfect = by["copy the input"], by["perfect"]
    # Copying shares most words with the references: that is why it is the baseline to beat.
    assert 40 < copy["chrF"] < 60 and 20 < copy["BLEU"] < 45
    assert copy["chrF 95% CI"] > 1 and copy["archaic share"] == 0
    assert perfect["chrF"] == pytest.approx(100) and perfect["chrF p vs copy"] < 0.05
    assert by["references"]["archaic share"] == pytest.approx(54 / 82)


def test_paired_bootstrap_does_not_call_noise_progress():
    rows = data.read_rows(data.course_data_path("test"))
    copy = metrics.copy_baseline(rows)
    nearly = list(copy)
    nearly[0] = rows[0]["output"]  # one sentence of 82 changed (it equals its input anyway)
    nearly[3] = rows[3]["output"]
    scores = metrics.compare_systems({"copy": copy, "one fix": nearly}, [r["output"] for r in rows], n_bootstrap=300)
    fix = scores["one fix"]["chrf"]
    assert fix.score > scores["copy"]["chrf"].score
    assert fix.p_vs_baseline > 0.05 or fix.score - scores["copy"]["chrf"].score < fix.ci
    with pytest.raises(ValueError, match="outputs for"):
        metrics.compare_systems({"a": ["x"], "b": ["y", "z"]}, ["x"])


def test_perplexity_ci_is_a_ratio_of_sums():
    losses = [(2.0, 1), (8.0, 4), (0.0, 0)]
    s = metrics.perplexity_ci(losses, n_bootstrap=500)
    assert s.score == pytest.approx(2.718281828 ** (10 / 5))
    assert s.ci > 0 and abs(s.mean - s.score) < 2 * s.ci + 1e-9
    assert metrics.perplexity_ci([(1.0, 2), (1.0, 2)]).ci == pytest.approx(0)


@pytest.mark.parametrize(
    "answer, accepted, ok",
    [
        ("The capital of France is Paris.", ["Paris"], True),
        ("There are 24 hours in a day.", ["2", "two"], False),  # whole tokens only
        ("The smallest prime number is 2, but ...", ["2", "two"], True),
        ("paris", ["Paris"], True),
    ],
)
def test_answer_correct(answer, accepted, ok):
    assert metrics.answer_correct(answer, accepted) is ok


def test_forgetting_probe_data_is_general_and_not_the_task():
    questions = metrics.general_questions()
    assert len(questions) >= 24
    assert all(q["question"].endswith("?") and q["answers"] for q in questions)
    text = metrics.general_text()
    assert len(text) >= 5
    assert metrics.style_share(text) == 0  # modern prose, not Shakespeare


def test_probes_run_on_the_tiny_model(tiny_model, tokenizer):
    probe = metrics.knowledge_probe(tiny_model, tokenizer, metrics.general_questions()[:3], progress=False,
                                    max_new_tokens=4)
    assert len(probe["answers"]) == 3 and 0 <= probe["accuracy"] <= 1
    ppl = metrics.text_perplexity(tiny_model, tokenizer, metrics.general_text()[:2])
    assert ppl > 1


def test_epoch_means_average_each_epoch():
    from peftlab.callbacks import HistoryCallback

    h = HistoryCallback()
    h.train = [(1, 4.0), (2, 2.0), (3, 1.0), (4, 3.0)]
    h.train_epoch = [0.5, 1.0, 1.5, 2.0]
    assert h.epoch_means() == [(1, 3.0), (2, 2.0)]


def test_paired_gain_is_the_ci_of_the_difference():
    rows = data.read_rows(data.course_data_path("test"))
    refs = [r["output"] for r in rows]
    copy = metrics.copy_baseline(rows)
    same = metrics.paired_gain(copy, copy, refs, n_bootstrap=200)
    assert same.score == 0 and same.ci == 0
    perfect = metrics.paired_gain(refs, copy, refs, n_bootstrap=200)
    assert perfect.score > 40 and perfect.score - perfect.ci > 0 and perfect.p_vs_baseline == 0
    one = list(copy)
    one[2] = refs[2]  # one sentence of 82 rewritten: better, but not beyond noise
    gain = metrics.paired_gain(one, copy, refs, n_bootstrap=500)
    assert 0 < gain.score < gain.ci
    table = {t["system"]: t for t in metrics.quality_table({"one fix": one}, rows, n_bootstrap=200)}
    assert table["one fix"]["chrF gain"] == pytest.approx(table["one fix"]["chrF"] - table["copy the input"]["chrF"])
    with pytest.raises(ValueError, match="equal, non-empty"):
        metrics.paired_gain(["a"], ["a", "b"], ["a"])
