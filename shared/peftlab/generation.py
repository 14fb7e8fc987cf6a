"""Generation: text for rows of a dataset (`generate`), and greedy decoding timed token by token
(`timed_generate`, on token ids from `prompt_ids`) for the serving and memory measurements.

`generate` is what every evaluation calls: batched, greedy, stopping at the end
of the assistant turn. `timed_generate` produces exactly `new_tokens` tokens per
row (EOS held back), so runs of the same shape cost the same, and notes when
each token arrives (a transformers streamer receives it after its copy to the
CPU, so on a GPU the time is real).
"""

from __future__ import annotations

import time

import torch

from .data import prompt_text
from .files import package_file


class InferenceError(ValueError):
    """A measurement asked for something that cannot work; the message names the argument and the fix."""


@torch.no_grad()
def generate(
    model,
    tokenizer,
    rows: list[dict],
    max_new_tokens: int = 48,
    batch_size: int = 8,
    system_prompt: str | None = None,
    progress: bool = True,
) -> list[str]:
    """Greedy generations for rows, batched with left padding (decoder-only models).

    Greedy (do_sample=False) with the KV cache, stopping each row at the end of the
    assistant turn (`<|im_end|>` for ChatML models) instead of at max_new_tokens.
    Rows are batched by prompt length so little compute goes to padding; the
    outputs come back in the rows' order. `progress` shows a bar per batch.
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    stop = [tokenizer.eos_token_id]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id and im_end not in stop:
        stop.append(im_end)
    prompts = [prompt_text(tokenizer, r, system_prompt) for r in rows]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    try:
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="generating", unit="batch", disable=not progress or not starts):
            idx = order[start : start + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                eos_token_id=stop, pad_token_id=tokenizer.pad_token_id,
            )
            new = out[:, enc["input_ids"].shape[1] :]  # (B, new tokens)
            for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
                outputs[i] = text.strip()
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs


# ------------------------------------------------------------ timed greedy decoding
def check_batch_sizes(batch_sizes) -> list[int]:
    sizes = list(batch_sizes)
    bad = [b for b in sizes if isinstance(b, bool) or not isinstance(b, int) or b < 1]
    if not sizes or bad:
        raise InferenceError(f"batch_sizes={sizes!r}: every batch size must be an integer >= 1, e.g. [1, 2, 4, 8, 16].")
    return sizes


def prompt_ids(tokenizer, batch_size: int, prompt_tokens: int) -> torch.Tensor:
    """(batch_size, prompt_tokens) token ids cut from the course's general text, a different window per row.

    Every row has the same length, so nothing is padded and every row costs the same.
    """
    check_batch_sizes([batch_size])
    if prompt_tokens < 1:
        raise InferenceError(f"prompt_tokens={prompt_tokens}: need at least 1 prompt token.")
    text = package_file("general_text.txt").read_text()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    stride = 7
    need = prompt_tokens + stride * (batch_size - 1)
    ids = (ids * (need // len(ids) + 1))[:need]
    return torch.tensor([ids[i * stride: i * stride + prompt_tokens] for i in range(batch_size)])


def _streamer_base():
    from transformers.generation.streamers import BaseStreamer

    return BaseStreamer


class TokenClock(_streamer_base()):
    """A generate streamer that notes the time each new token arrives (the prompt's own put is skipped)."""

    def __init__(self):
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value):
        if self._prompt_seen:
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self):
        pass


@torch.no_grad()
def timed_generate(model, input_ids: torch.Tensor, new_tokens: int, use_cache: bool = True,
                   adapter_names: list[str] | None = None, pad_token_id: int | None = None) -> dict:
    """Greedy generation of exactly `new_tokens` tokens per row, timed token by token.

    Returns the new tokens (B, new_tokens), the wall time, the first-token latency
    (prompt in, first token out) and the gaps between later tokens.
    """
    if new_tokens < 1:
        raise InferenceError(f"new_tokens={new_tokens}: generate at least 1 token.")
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    extra = {} if adapter_names is None else {"adapter_names": list(adapter_names)}
    clock = TokenClock()
    start = time.perf_counter()
    out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=use_cache,
                         streamer=clock, pad_token_id=pad_token_id, temperature=None, top_p=None, top_k=None,
                         **extra)
    total = time.perf_counter() - start
    gaps = [b - a for a, b in zip(clock.times, clock.times[1:])]
    return {"tokens": out[:, input_ids.shape[1]:].cpu(), "total_s": total, "first_token_s": clock.times[0] - start,
            "gaps_s": gaps}
