"""Held-out perplexity, BLEU/chrF and batched generation (peak memory is measured in `memory.py`).

Perplexity is exp(mean token cross-entropy) over tokens that carry loss on
data the model never trained on. A training loss of 2.245 nats/token is a
perplexity of exp(2.245) ~= 9.44 on the *training* data, which the model has
seen: only the held-out number says how well it generalizes.
"""

from __future__ import annotations

import math

import torch

from .data import IGNORE_INDEX, make_collator, prompt_text


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


@torch.no_grad()
def generate(
    model,
    tokenizer,
    rows: list[dict],
    max_new_tokens: int = 48,
    batch_size: int = 8,
    system_prompt: str | None = None,
) -> list[str]:
    """Greedy generations for rows, batched with left padding (decoder-only models)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    try:
        for start in range(0, len(rows), batch_size):
            prompts = [prompt_text(tokenizer, r, system_prompt) for r in rows[start : start + batch_size]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            new = out[:, enc["input_ids"].shape[1] :]  # (B, new tokens)
            outputs.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs


def evaluate_model(model, tokenizer, tokenized, rows: list[dict], n_generate: int | None = None, **gen_kwargs):
    """Held-out loss, perplexity, BLEU and chrF, and the generations themselves."""
    loss = heldout_loss(model, tokenized, tokenizer)
    rows = rows if n_generate is None else rows[:n_generate]
    preds = generate(model, tokenizer, rows, **gen_kwargs)
    scores = bleu_chrf(preds, [r["output"] for r in rows])
    return {"loss": loss, "perplexity": perplexity_from_loss(loss), **scores, "generations": preds}
