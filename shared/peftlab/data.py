"""Instruction data: load, validate, format with the chat template, mask labels.

A row has three fields, the Alpaca convention the course uses throughout:

    {"instruction": "Rewrite the sentence ...", "input": "Where are you going?",
     "output": "Whither goest thou?"}

`input` may be empty. Every row becomes a chat (system, user, assistant),
is tokenized with the tokenizer's own chat template, and gets labels of -100
on every prompt token so the loss falls on the response only.

The course's Shakespeare pairs (`data/shakespeare_train.jsonl`, 172 rows, and
`data/shakespeare_test.jsonl`, 82 held-out rows) were written by hand for the
course: modern everyday English in, Early Modern English out. The held-out rows
were written before any model was run on them, and none is ever dropped or
edited because of how a model scores on it: that would tune the course's
results to its own test. `tests/test_data.py` checks that no row repeats
another, exactly or after `normalise_text`, and that no held-out input is a
near-copy of a training input (`near_duplicates`).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import package_file

IGNORE_INDEX = -100  # the label value torch's cross-entropy skips
REQUIRED_FIELDS = ("instruction", "input", "output")
PACKAGE_DATA = {"train": "shakespeare_train.jsonl", "test": "shakespeare_test.jsonl"}


class DataError(ValueError):
    """Bad data; the message names the file, the line and the fix."""


# --------------------------------------------------------------------- loading
def _check_row(row: Any, where: str) -> dict[str, str]:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with {', '.join(REQUIRED_FIELDS)}, got {type(row).__name__}.")
    missing = [f for f in ("instruction", "output") if f not in row]
    if missing:
        raise DataError(
            f"{where}: missing field(s) {', '.join(missing)}; every row needs "
            f"'instruction' and 'output' ('input' may be empty). Fields found: {sorted(row)}."
        )
    clean = {}
    for name in REQUIRED_FIELDS:
        value = row.get(name, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise DataError(f"{where}: field '{name}' must be text, got {type(value).__name__} ({value!r:.40}).")
        clean[name] = value
    for name in ("instruction", "output"):
        if not clean[name].strip():
            raise DataError(f"{where}: field '{name}' is empty; remove the row or fill it in.")
    return clean


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """Read and validate a JSONL or CSV file of instruction/input/output rows."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file.")
    suffix = path.suffix.lower()
    rows: list[dict[str, str]] = []
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Name the line (as every other data error does) and the column, then the byte offset.
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        lineno = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}:{lineno}: not UTF-8 text (byte {exc.start}, byte {exc.start - line_start + 1} of the line: "
            f"{raw[exc.start:exc.end]!r}); save the file as UTF-8."
        ) from None
    if suffix in (".jsonl", ".json"):
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); "
                    "each line must be one JSON object."
                ) from None
            rows.append(_check_row(row, f"{path}:{lineno}"))
    elif suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        header = reader.fieldnames or []
        missing = [f for f in ("instruction", "output") if f not in header]
        if missing:
            raise DataError(f"{path}:1: header lacks column(s) {', '.join(missing)}; header is {header}.")
        for row in reader:
            lineno = reader.line_num
            if None in row or any(v is None for v in row.values()):
                raise DataError(f"{path}:{lineno}: wrong number of columns for header {header}.")
            rows.append(_check_row(row, f"{path}:{lineno}"))
    else:
        raise DataError(f"{path}: unsupported extension '{suffix}'; use .jsonl or .csv.")
    if not rows:
        raise DataError(f"{path}: holds no rows.")
    return rows


def load_dataset_file(path: str | Path):
    """A validated file as a `datasets.Dataset`."""
    from datasets import Dataset

    return Dataset.from_list(read_rows(path))


def course_data_path(split: str) -> Path:
    if split not in PACKAGE_DATA:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(PACKAGE_DATA)}.")
    return package_file(PACKAGE_DATA[split])


def load_course_data(split: str = "train"):
    """The course's Shakespeare pairs ('train' or 'test') as a `datasets.Dataset`."""
    return load_dataset_file(course_data_path(split))


# ------------------------------------------------------------------ duplicates
def normalise_text(text: str) -> str:
    """Lower case, typographic apostrophes made plain, punctuation dropped, spaces collapsed:
    'Where is my sister?' and "where is my  sister" normalise to the same text."""
    import re

    return " ".join(re.findall(r"[a-z0-9']+", text.lower().replace("\u2019", "'")))


def near_duplicates(texts: list[str], others: list[str] | None = None,
                    threshold: float = 0.9) -> list[tuple[int, int, float]]:
    """Pairs (i, j, similarity) of texts whose normalised forms are at least `threshold` alike.

    Within `texts` (i < j), or between `texts[i]` and `others[j]` when `others`
    is given. Similarity is difflib's ratio on the normalised texts: 1.0 means
    equal after `normalise_text` (case, punctuation, spacing); 'Where is my
    sister?' against 'Where is my sister now?' is 0.9.
    """
    from difflib import SequenceMatcher

    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}.")
    a = [normalise_text(t) for t in texts]
    b = a if others is None else [normalise_text(t) for t in others]
    pairs = []
    for i, x in enumerate(a):
        for j in range(i + 1 if others is None else 0, len(b)):
            m = SequenceMatcher(None, x, b[j])
            if m.real_quick_ratio() >= threshold and m.quick_ratio() >= threshold and m.ratio() >= threshold:
                pairs.append((i, j, round(m.ratio(), 3)))
    return pairs


# ------------------------------------------------------------------ formatting
def to_messages(row: dict[str, str], system_prompt: str | None = None, with_answer: bool = True) -> list[dict]:
    """One row as chat messages. No system message means the template's default."""
    user = row["instruction"].strip()
    if row.get("input", "").strip():
        user += "\n\n" + row["input"].strip()
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": user})
    if with_answer:
        messages.append({"role": "assistant", "content": row["output"].strip()})
    return messages


def echo_rows(rows) -> list[dict[str, str]]:
    """The same rows with the answer replaced by the input sentence itself.

    The tiny model is pre-trained on these (it learns to answer with the
    input), and the session measures forgetting with them: perplexity of
    the base model's own behaviour on held-out sentences, before and after.
    """
    return [{**dict(r), "output": r["input"]} for r in rows if r.get("input", "").strip()]


def _ids(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True
    )
    return list(out["input_ids"])


def prompt_text(tokenizer, row: dict[str, str], system_prompt: str | None = None) -> str:
    """The prompt as the model sees it at generation time."""
    return tokenizer.apply_chat_template(
        to_messages(row, system_prompt, with_answer=False), tokenize=False, add_generation_prompt=True
    )


def tokenize_example(tokenizer, row: dict[str, str], max_length: int, system_prompt: str | None = None) -> dict:
    """input_ids, attention_mask and labels (-100 on the prompt) for one row.

    The prompt is the chat rendered up to the assistant header; the full text
    adds the answer. If the prompt's tokens are not a prefix of the full
    text's tokens, the template does not append turns the way the masking
    assumes, and masking would be wrong: that is an error, not a guess.
    """
    if tokenizer.chat_template is None:
        raise DataError(
            f"tokenizer {tokenizer.name_or_path!r} has no chat template; use an -Instruct model "
            "or set tokenizer.chat_template."
        )
    prompt = _ids(tokenizer, to_messages(row, system_prompt, with_answer=False), add_generation_prompt=True)
    full = _ids(tokenizer, to_messages(row, system_prompt), add_generation_prompt=False)
    if full[: len(prompt)] != prompt:
        raise DataError(
            "chat template mismatch: the prompt's tokens are not a prefix of prompt + answer, so the "
            "response cannot be located for label masking; check the tokenizer's chat_template."
        )
    truncated = len(full) > max_length
    full = full[:max_length]
    labels = [IGNORE_INDEX] * min(len(prompt), len(full)) + full[len(prompt) :]
    return {
        "input_ids": full,
        "attention_mask": [1] * len(full),
        "labels": labels,
        "truncated": truncated,
    }


@dataclass
class DataStats:
    """What tokenization did to a data set; printed before training."""

    examples: int = 0
    truncated: int = 0
    dropped: int = 0  # truncated so far that no response token survived
    tokens: int = 0
    response_tokens: int = 0
    lengths: list[int] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        longest = max(self.lengths, default=0)
        return (
            f"{self.examples} examples, {self.tokens} tokens ({self.response_tokens} carry loss), "
            f"longest {longest}; {self.truncated} truncated, {self.dropped} dropped (no response left)"
        )


def tokenize_dataset(dataset, tokenizer, max_length: int, system_prompt: str | None = None, source: str = "data"):
    """Tokenize a Dataset of rows; return (tokenized Dataset, DataStats).

    Raises DataError when no label survives masking: training on it would
    report a loss of zero (or NaN) and learn nothing.
    """
    from datasets import Dataset

    stats = DataStats()
    kept = []
    for row in dataset:
        ex = tokenize_example(tokenizer, row, max_length, system_prompt)
        stats.examples += 1
        stats.truncated += ex.pop("truncated")
        n_resp = sum(label != IGNORE_INDEX for label in ex["labels"])
        if n_resp == 0:
            stats.dropped += 1
            continue
        stats.tokens += len(ex["input_ids"])
        stats.response_tokens += n_resp
        stats.lengths.append(len(ex["input_ids"]))
        kept.append(ex)
    if not kept:
        raise DataError(
            f"{source}: every label is masked ({stats.examples} examples, all prompt and no response "
            f"within max_length={max_length}); raise max_length or check the chat template."
        )
    return Dataset.from_list(kept), stats


def make_collator(tokenizer, pad_to: int | None = None):
    """Dynamic padding to the longest example of each batch (labels padded with -100).

    `pad_to` pads every batch to a fixed length instead: the naive baseline the
    throughput benchmark compares against.
    """
    from transformers import DataCollatorForSeq2Seq

    if pad_to is None:
        return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
    return DataCollatorForSeq2Seq(
        tokenizer, padding="max_length", max_length=pad_to, label_pad_token_id=IGNORE_INDEX
    )


def longest_batch(dataset, tokenizer, batch_size: int) -> dict:
    """The `batch_size` longest tokenized rows, collated as training collates them: the
    batch with the most tokens, where a training step's memory peaks."""
    order = sorted(range(len(dataset)), key=lambda i: -len(dataset[i]["input_ids"]))
    return make_collator(tokenizer)([dataset[i] for i in order[:batch_size]])


def show_masking(tokenizer, row: dict[str, str], max_length: int = 512, system_prompt: str | None = None):
    """[(token text, carries_loss)] for one example, to show students what is trained."""
    ex = tokenize_example(tokenizer, row, max_length, system_prompt)
    return [
        (tokenizer.decode([tid]), label != IGNORE_INDEX)
        for tid, label in zip(ex["input_ids"], ex["labels"])
    ]
