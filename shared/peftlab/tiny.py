"""The offline tiny model: a Qwen2-architecture causal LM small enough for CI.

Nothing here touches the network. `ensure_tiny_model()` builds, once per cache
directory, a directory that looks exactly like a downloaded Qwen2.5-Instruct
checkpoint (config.json, model.safetensors, tokenizer.json, chat template),
and every other part of the course loads it through the same
`from_pretrained` calls that load `Qwen/Qwen2.5-3B-Instruct`.

Why not Qwen's real 151,643-token vocabulary? With a 64-wide model its
embedding matrix would hold 98% of the weights and every logits tensor would
be 150x larger, so CPU tests would mostly measure the softmax. Instead we train
a byte-level BPE on the course's own text with Qwen2's exact pre-tokenizer
(same regex, byte-level alphabet, NFC), Qwen's special tokens and Qwen2.5's
ChatML chat template (a copy of the one bundled in trl's wheel). Tokens differ, structure is the
same: chat formatting, label masking and padding behave as with Qwen2.5.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .files import package_file

TINY_NAME = "tiny-qwen2"
# Bump when the recipe changes so stale caches are rebuilt, never reused.
TINY_VERSION = "v2"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Shapes of the tiny model. GQA with 2 KV heads and tied embeddings, like Qwen2.5-0.5B/3B.
TINY_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
)
BPE_VOCAB = 1024
PRETRAIN_STEPS = 300
# The tiny model is built from the course's first Shakespeare pairs, the data it was
# designed with: 64 training and 24 held-out rows. Rows added to the data set later stay
# out of its tokenizer's corpus and its pre-training, so the data set can grow without
# changing the tiny model (its vocabulary, its weights, and every exercise number and
# grader reference computed with it).
TINY_CORPUS_ROWS = {"shakespeare_train.jsonl": 64, "shakespeare_test.jsonl": 24}


def cache_root() -> Path:
    """Where built artefacts live: $PEFTLAB_CACHE, else ~/.cache/peftlab."""
    return Path(os.environ.get("PEFTLAB_CACHE", Path.home() / ".cache" / "peftlab"))


def tiny_model_dir() -> Path:
    return cache_root() / f"{TINY_NAME}-{TINY_VERSION}"


def qwen25_chat_template() -> str:
    """Qwen2.5's own chat template: package data, a verbatim copy of trl's `chat_templates/qwen2_5.jinja`.

    Copied rather than read from trl: trl needs datasets>=4.7, Colab ships 4.0.
    """
    return package_file("qwen2_5_chat_template.jinja").read_text()


def _course_corpus() -> list[str]:
    """Text the BPE is trained on: the course's data plus chat scaffolding."""
    from .data import PACKAGE_DATA

    lines = [DEFAULT_SYSTEM, "system", "user", "assistant", "Rewrite the sentence in the style of Shakespeare."]
    for name in sorted(PACKAGE_DATA.values()):
        path = package_file(name)
        rows = [row for row in path.read_text().splitlines() if row.strip()][: TINY_CORPUS_ROWS[name]]
        for row in rows:
            lines.extend(str(v) for v in json.loads(row).values())
    return lines


def build_tokenizer():
    """Train a byte-level BPE with Qwen2's pre-tokenizer; deterministic for a given corpus."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        special_tokens=[SPECIAL_TOKENS[0]],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_course_corpus(), trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=state["vocab"],
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",  # Qwen2.5-Instruct ends a turn with <|im_end|>
        pad_token="<|endoftext|>",
        model_max_length=TINY_SHAPE["max_position_embeddings"],
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tokenizer.chat_template = qwen25_chat_template()
    return tokenizer


def build_model(tokenizer, seed: int = 0):
    """A randomly initialised Qwen2ForCausalLM, seeded so every build is identical."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    # Pad the embedding to a multiple of 64 as Qwen does (151,665 tokens -> 151,936 rows).
    vocab_size = -(-len(tokenizer) // 64) * 64
    config = Qwen2Config(
        vocab_size=vocab_size,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
        **TINY_SHAPE,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = [
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
        tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    ]
    return model


def _echo_chats(tokenizer) -> list[list[int]]:
    """Chats in which the assistant repeats the user's modern sentence.

    This is the tiny model's "pre-training": it learns English words, the
    chat format and to answer with the input, i.e. an instruct model that
    paraphrases. The case study then teaches it Shakespearean style, so
    before/after generations differ the way they do on Qwen2.5. Only the
    training split's inputs are used; held-out responses stay unseen.
    """
    from .data import PACKAGE_DATA, course_data_path, echo_rows, read_rows, to_messages

    return [
        list(tokenizer.apply_chat_template(to_messages(row), tokenize=True, return_dict=True)["input_ids"])
        for row in echo_rows(read_rows(course_data_path("train"))[: TINY_CORPUS_ROWS[PACKAGE_DATA["train"]]])
    ]


def pretrain(model, tokenizer, steps: int = PRETRAIN_STEPS, seed: int = 0) -> list[float]:
    """A few seconds of full training on echo chats; returns the loss curve."""
    import torch

    chats = _echo_chats(tokenizer)
    width = max(len(c) for c in chats)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(chats), width), pad)  # (N, T)
    mask = torch.zeros_like(ids)
    for i, c in enumerate(chats):
        ids[i, : len(c)] = torch.tensor(c)
        mask[i, : len(c)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(chats), (16,), generator=gen)
        loss = model(input_ids=ids[idx], attention_mask=mask[idx], labels=labels[idx]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def _world_readable(directory: Path) -> None:
    """mkdtemp and safetensors write owner-only; sandboxed grading kernels read the model as another user."""
    directory.chmod(0o755)
    for f in directory.iterdir():
        f.chmod(0o644)


def ensure_tiny_model(force: bool = False) -> Path:
    """Build the tiny model and tokenizer into the cache once; return the directory.

    The build writes to a temporary sibling and renames it into place, so two
    processes (e.g. the ranks of a torchrun job) never see a half-written model.
    """
    target = tiny_model_dir()
    if (target / "config.json").is_file() and not force:
        if os.access(target, os.W_OK):
            _world_readable(target)  # a build by an older version may be owner-only
        return target
    def build(folder: Path) -> None:
        tokenizer = build_tokenizer()
        model = build_model(tokenizer)
        pretrain(model, tokenizer)
        tokenizer.save_pretrained(folder)
        model.save_pretrained(folder)

    return build_atomically(target, build, force)


def build_atomically(target: Path, build, force: bool = False) -> Path:
    """Run `build(folder)` in a temporary sibling of `target`, then rename it into place.

    An interrupted build leaves no half-written checkpoint behind, and two
    processes building the same thing (the ranks of a torchrun job) never see
    one: whichever renames second finds the first's identical build.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        _world_readable(tmp)
        if force and target.exists():
            shutil.rmtree(target)
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished first; its build is identical to ours.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
