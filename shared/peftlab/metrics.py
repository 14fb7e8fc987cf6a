"""Held-out perplexity, BLEU/chrF, confidence intervals and forgetting probes (generation is in
`generation.py`, the style lexicon in `style.py`, peak memory in `memory.py`).

Perplexity is exp(mean token cross-entropy) over tokens that carry loss on
data the model never trained on. A training loss of 2.245 nats/token is a
perplexity of exp(2.245) ~= 9.44 on the *training* data, which the model has
seen: only the held-out number says how well it generalizes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from .data import IGNORE_INDEX, make_collator
from .files import package_file
from .generation import generate  # noqa: F401  (metrics.generate: the sessions' name for it)
from .models import logits_positions, response_logits_supported
from .style import (  # noqa: F401  (the style lexicon; metrics.<name> is how sessions and exercise 08 reach it)
    ARCHAIC_WORDS,
    INFORMAL_WORDS,
    PIRATE_WORDS,
    archaic_forms,
    formal_share,
    informal_marks,
    pirate_forms,
    pirate_share,
    style_share,
)


def perplexity_from_loss(loss: float) -> float:
    return math.exp(loss)


@torch.no_grad()
def heldout_loss(model, tokenized, tokenizer, batch_size: int = 8) -> float:
    """Mean cross-entropy (nats/token) over all response tokens of a tokenized set.

    Tokens are summed across batches (not batch means averaged), so the result
    does not depend on the batch size or on padding.
    """
    collate = make_collator(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    rows = [tokenized[i] for i in range(len(tokenized))]
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size])
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # Prompt tuning prepends its virtual tokens to the input, so its logits are longer: keep the real ones.
        logits = logits[:, -batch["input_ids"].shape[1] :]
        # Next-token prediction: logits at t predict the label at t + 1.
        logits = logits[:, :-1, :].float()  # (B, T-1, V)
        labels = batch["labels"][:, 1:]  # (B, T-1)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        total += loss.item()
        count += int((labels != IGNORE_INDEX).sum())
    model.train(was_training)
    if count == 0:
        raise ValueError("held-out set has no response tokens to score.")
    return total / count


def heldout_perplexity(model, tokenized, tokenizer, batch_size: int = 8) -> float:
    return perplexity_from_loss(heldout_loss(model, tokenized, tokenizer, batch_size))


def bleu_chrf(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF from sacrebleu (works offline, unlike evaluate's hub scripts)."""
    import sacrebleu

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    return {
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
    }


def evaluate_model(model, tokenizer, tokenized, rows: list[dict], n_generate: int | None = None, **gen_kwargs):
    """Held-out loss, perplexity, BLEU and chrF, and the generations themselves."""
    loss = heldout_loss(model, tokenized, tokenizer)
    rows = rows if n_generate is None else rows[:n_generate]
    preds = generate(model, tokenizer, rows, **gen_kwargs)
    scores = bleu_chrf(preds, [r["output"] for r in rows])
    return {"loss": loss, "perplexity": perplexity_from_loss(loss), **scores, "generations": preds}


def copy_baseline(rows: list[dict]) -> list[str]:
    """The trivial system every quality table must beat: answer with the input unchanged."""
    return [r["input"] for r in rows]


# ------------------------------------------------------------ confidence intervals
@dataclass
class Scored:
    """A corpus score with its bootstrap mean and 95% half-width (score +- ci)."""

    score: float
    mean: float
    ci: float
    p_vs_baseline: float | None = None  # paired bootstrap p-value against the first system

    def __str__(self) -> str:
        return f"{self.score:.1f} +- {self.ci:.1f}"


def compare_systems(
    systems: dict[str, list[str]], references: list[str], n_bootstrap: int = 1000, seed: int = 12345
) -> dict[str, dict[str, Scored]]:
    """BLEU and chrF of every system with 95% bootstrap CIs, each tested against the first system.

    sacrebleu's paired bootstrap resampling (Koehn 2004): the same resampled
    sentence sets score every system, so the p-value says how often a system
    would *not* beat the baseline (the first entry, e.g. copy-the-input) on a
    resample of the held-out set. Returns {system: {"bleu": Scored, "chrf": Scored}}.
    """
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    names = list(systems)
    for name in names:
        if len(systems[name]) != len(references):
            raise ValueError(f"system {name!r}: {len(systems[name])} outputs for {len(references)} references.")
    if len(names) < 2:
        raise ValueError("compare_systems needs a baseline and at least one system.")
    old_seed = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(seed)
    try:
        test = PairedTest(
            [(n, systems[n]) for n in names], {"bleu": BLEU(), "chrf": CHRF()}, [references],
            test_type="bs", n_samples=n_bootstrap,
        )
        _, results = test()
    finally:
        if old_seed is None:
            os.environ.pop("SACREBLEU_SEED", None)
        else:
            os.environ["SACREBLEU_SEED"] = old_seed
    # sacrebleu names its columns by the metrics' signatures ('BLEU', 'chrF2'), in our order.
    columns = dict(zip(("bleu", "chrf"), [k for k in results if k != "System"]))
    out: dict[str, dict[str, Scored]] = {}
    for i, name in enumerate(names):
        out[name] = {}
        for metric, column in columns.items():
            r = results[column][i]
            out[name][metric] = Scored(float(r.score), float(r.mean), float(r.ci),
                                       None if r.p_value is None else float(r.p_value))
    return out


@torch.no_grad()
def example_losses(model, tokenized, tokenizer, batch_size: int = 8) -> list[tuple[float, int]]:
    """(summed cross-entropy in nats, scored tokens) for every example: what a perplexity CI resamples.

    Where the model allows it, only the positions whose next token is scored are projected onto the
    vocabulary (`logits_to_keep`, as the course trainer does): the same sums over the same tokens."""
    collate = make_collator(tokenizer)
    device = next(model.parameters()).device
    fewer = response_logits_supported(model)
    was_training = model.training
    model.eval()
    rows = [tokenized[i] for i in range(len(tokenized))]
    out = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = {k: v.to(device) for k, v in collate(rows[start : start + batch_size]).items()}
            labels = batch["labels"][:, 1:]  # (B, T-1)
            keep = logits_positions(batch["labels"]) if fewer else None
            if keep is not None and len(keep):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               logits_to_keep=keep).logits.float()  # (B, K, V)
                labels = labels[:, keep]
            else:
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                logits = logits[:, -batch["input_ids"].shape[1] :]  # prompt tuning: drop the virtual tokens' logits
                logits = logits[:, :-1, :].float()  # (B, T-1, V)
            loss = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
            )  # (B, K), zero where ignored
            for row_loss, row_labels in zip(loss, labels):
                out.append((float(row_loss.sum()), int((row_labels != IGNORE_INDEX).sum())))
    model.train(was_training)
    return out


def share_interval(share: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a share measured on n rows (Wilson 1927): unlike share +- z*SE it stays
    inside 0..1 and does not collapse to a point at 0% or 100%, which small n reaches often."""
    if n <= 0:
        return 0.0, 1.0
    denom = 1 + z * z / n
    center = (share + z * z / (2 * n)) / denom
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def perplexity_ci(losses: list[tuple[float, int]], n_bootstrap: int = 1000, seed: int = 12345) -> Scored:
    """Perplexity of a set with a 95% bootstrap CI over examples (sacrebleu's percentile rule)."""
    import numpy as np
    from sacrebleu.significance import estimate_ci

    nats = np.array([n for n, _ in losses])
    counts = np.array([c for _, c in losses])
    if counts.sum() == 0:
        raise ValueError("no scored tokens: every label is masked.")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(losses), size=(n_bootstrap, len(losses)))
    samples = np.exp(nats[idx].sum(1) / np.maximum(counts[idx].sum(1), 1))
    mean, ci = estimate_ci(samples)
    return Scored(float(np.exp(nats.sum() / counts.sum())), float(mean), float(ci))


def quality_table(
    model_outputs: dict[str, list[str]], rows: list[dict], n_bootstrap: int = 1000
) -> list[dict]:
    """One row per system, copy-the-input first: BLEU and chrF with CIs, p vs copy, style share.

    "chrF gain" is chrF minus copy-the-input's, with the 95% CI of that paired
    difference ("chrF gain 95% CI"): beyond noise when gain - CI > 0.

    `model_outputs` maps names (e.g. 'base', 'trained') to generations for `rows`.
    """
    refs = [r["output"] for r in rows]
    systems = {"copy the input": copy_baseline(rows), **model_outputs}
    scores = compare_systems(systems, refs, n_bootstrap=n_bootstrap)
    table = []
    for name, outputs in systems.items():
        s = scores[name]
        gain = paired_gain(outputs, systems["copy the input"], refs, n_bootstrap=n_bootstrap)
        table.append({
            "system": name, "BLEU": s["bleu"].score, "BLEU 95% CI": s["bleu"].ci,
            "chrF": s["chrf"].score, "chrF 95% CI": s["chrf"].ci,
            "chrF gain": gain.score, "chrF gain 95% CI": gain.ci,
            "chrF p vs copy": s["chrf"].p_vs_baseline, "archaic share": style_share(outputs),
        })
    copy = systems["copy the input"]
    gain = paired_gain(refs, copy, refs, n_bootstrap=n_bootstrap)
    table.append({"system": "references", "BLEU": 100.0, "BLEU 95% CI": 0.0, "chrF": 100.0,
                  "chrF 95% CI": 0.0, "chrF gain": gain.score, "chrF gain 95% CI": gain.ci,
                  "chrF p vs copy": None, "archaic share": style_share(refs)})
    return table


def paired_gain(
    system: list[str], baseline: list[str], references: list[str], n_bootstrap: int = 1000, seed: int = 12345
) -> Scored:
    """chrF of `system` minus chrF of `baseline`, with the 95% CI of that difference.

    The same resampled sentence sets score both systems (paired bootstrap, as in
    sacrebleu's significance test, whose sufficient statistics this reuses), so
    the CI is the CI of the *difference*: a system beats the baseline beyond
    noise when `score - ci > 0`. The two systems' own CIs overlap far more than
    that, since most of their variance comes from which sentences are drawn.
    """
    import numpy as np
    from sacrebleu.metrics import CHRF
    from sacrebleu.significance import estimate_ci

    if not (len(system) == len(baseline) == len(references)) or not references:
        raise ValueError(f"paired_gain needs equal, non-empty lists: {len(system)} system outputs, "
                         f"{len(baseline)} baseline outputs, {len(references)} references.")
    metric = CHRF()
    refs = [references]
    stats = [np.array(metric._extract_corpus_statistics(outputs, refs), dtype="float64")
             for outputs in (system, baseline)]
    idx = np.random.default_rng(seed).integers(0, len(references), size=(n_bootstrap, len(references)))
    diffs = np.array([metric._compute_score_from_stats(stats[0][i].sum(0)).score
                      - metric._compute_score_from_stats(stats[1][i].sum(0)).score for i in idx])
    real = metric.corpus_score(system, refs).score - metric.corpus_score(baseline, refs).score
    mean, ci = estimate_ci(diffs)
    return Scored(float(real), float(mean), float(ci), float((diffs <= 0).mean()))


# ------------------------------------------------------------ forgetting
def general_questions() -> list[dict]:
    """The course's general-knowledge probe: [{"question", "answers": [accepted substrings]}]."""
    import json

    text = package_file("general_questions.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def general_text() -> list[str]:
    """Paragraphs of plain modern English prose (not Shakespeare) for a forgetting perplexity."""
    text = package_file("general_text.txt").read_text()
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def answer_correct(answer: str, accepted: list[str]) -> bool:
    """True when the answer contains one of the accepted strings (case-insensitive, whole words)."""
    import re

    low = answer.lower()
    return any(re.search(rf"(?<![a-z0-9]){re.escape(a.lower())}(?![a-z0-9])", low) for a in accepted)


def knowledge_probe(model, tokenizer, questions: list[dict] | None = None, progress: bool = True, **gen) -> dict:
    """Ask the general questions as plain chats (no training instruction); score the answers."""
    questions = questions or general_questions()
    rows = [{"instruction": q["question"], "input": "", "output": ""} for q in questions]
    answers = generate(model, tokenizer, rows, progress=progress, **{"max_new_tokens": 32, **gen})
    correct = [answer_correct(a, q["answers"]) for a, q in zip(answers, questions)]
    return {"accuracy": sum(correct) / len(correct), "correct": correct, "answers": answers}


@torch.no_grad()
def text_perplexity(model, tokenizer, texts: list[str] | None = None) -> float:
    """Perplexity of plain text (no chat template), summed over tokens of all texts."""
    texts = texts or general_text()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)  # (1, T)
        out = model(input_ids=ids, labels=ids)
        n = ids.shape[1] - 1
        total += float(out.loss) * n
        count += n
    model.train(was_training)
    return math.exp(total / count)
