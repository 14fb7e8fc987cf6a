"""Probes of exercise 08: they decide its points (peftlab.grader.probes; grading/README.md).

Each runs in the student's kernel after the notebook, on sentences and adapter outputs drawn from `seed`
(the class's secret), and returns plain values; the grader compares them with what the solution returns.
Each checks what its test cell checks, so a wrong answer loses the same tests (tests/test_fair_grading.py).
The probes of the rate and the given ranking run with the course's `markers` (`metrics.archaic_forms`)
standing in for the student's, as their test cells do when graded: a slip in `markers` costs `test_markers`
alone.
"""

from peftlab.grader.probes import close, exact, probe


def _sentences(rng, n):
    """Sentences mixing archaic forms (any case, with punctuation and apostrophes), words that hold one
    (thousand, where, party), -eth verbs and words that only end like one, and empty texts."""
    markers = ["thou", "thee", "thy", "art", "hath", "doth", "ere", "ye", "nay", "anon", "'tis", "'twas",
               "ne'er", "o'er", "\u2019tis", "prithee", "wherefore", "speaketh", "cometh", "loveth"]
    traps = ["thousand", "theme", "where", "here", "party", "start", "yes", "eyes", "anonymous", "teeth",
             "beneath", "elizabeth", "macbeth", "there", "before", "nothing", "the", "they", "goeth"]
    plain = ["you", "are", "going", "king", "letter", "late", "friend", "we", "shall", "love", "sea", "gold"]
    out = []
    for i in range(n):
        if i % 7 == 3:
            out.append(rng.choice(["", "   "]))
            continue
        words = []
        for _ in range(rng.randint(1, 8)):
            word = rng.choice(rng.choice([markers, traps, plain, plain]))
            word = rng.choice([word, word, word.capitalize(), word.upper()])
            words.append(rng.choice(["", "", "(", '"']) + word + rng.choice(["", "", ",", ".", "!", "?", ";", ")"]))
        out.append(" ".join(words))
    return out


@probe("test_markers", compare=exact)
def markers_of_sentences(seed):
    import random

    rng = random.Random(seed)
    return [[text, markers(text)] for text in _sentences(rng, 24)]  # noqa: F821


@probe("test_rate", compare=close(rtol=1e-9))
def rates(seed):
    import random

    from peftlab import checks, metrics

    rng = random.Random(seed + 1)
    with checks.standing_in(globals(), markers=metrics.archaic_forms):  # as test_rate is graded
        out = {"rates": [float(marker_rate(_sentences(rng, rng.randint(1, 9)))) for _ in range(8)]}  # noqa: F821
    for name, bad, kind, word in [("empty list", [], ValueError, "texts"), ("one string", "Thou art", TypeError, "list")]:
        try:
            marker_rate(bad)  # noqa: F821
            out[name] = "no error"
        except kind as exc:
            out[name] = word in str(exc).lower()
        except Exception as exc:
            out[name] = type(exc).__name__
    return out


@probe("test_ranking", compare=close(rtol=1e-9))
def rankings(seed):
    """Drawn adapters, with ties forced, ranked by the course's metric and by an unrelated one (len)."""
    import random

    from peftlab import metrics

    rng = random.Random(seed + 2)
    out = []
    for metric in (metrics.style_share, len):
        names = rng.sample(["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"], rng.randint(3, 6))
        outputs = {name: _sentences(rng, rng.randint(1, 4)) for name in names}
        outputs[names[-1]] = list(outputs[names[0]])  # a tie at every seed: ties must share a rank
        out.append([[row["rank"], row["adapter"], float(row["score"])] for row in rank_adapters(outputs, metric)])  # noqa: F821
    return out


@probe("test_given_ranking", compare=close(rtol=1e-9))
def given_ranking(seed):
    """The five given systems, then a drawn three to five of them under drawn names. The given ranking alone is
    the same at every seed: a lying kernel could send it, worked out from the course's metric, without the
    student's code. The systems' scores never tie, so the drawn rows rank as the given ones do."""
    import random

    from peftlab import checks, metrics

    rng = random.Random(seed + 3)
    systems = rng.sample(sorted(ADAPTER_OUTPUTS), rng.randint(3, len(ADAPTER_OUTPUTS)))  # noqa: F821
    drawn = {f"{name}-{rng.randint(10, 99)}": ADAPTER_OUTPUTS[name] for name in systems}  # noqa: F821
    out = []
    with checks.standing_in(globals(), markers=metrics.archaic_forms):  # as test_given_ranking is graded
        for outputs in (ADAPTER_OUTPUTS, drawn):  # noqa: F821
            ranked = rank_adapters(outputs, marker_rate)  # noqa: F821
            out.append([[row["rank"], row["adapter"], float(row["score"])] for row in ranked])
    return out
