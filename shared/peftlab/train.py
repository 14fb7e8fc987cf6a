"""Fine-tuning with `transformers.Trainer`, plus what the course adds to it.

Trainer brings progress bars, checkpoint resume and accelerate-backed
multi-process training (DDP, FSDP, DeepSpeed via `accelerate launch`; on CPU,
`torchrun --nproc_per_node 2` with gloo). This module adds what Trainer lacks:
a record of loss, tokens/s and peak memory (`TrainResult`), and a loss that
computes only the logits it needs (`CourseTrainer`). The callbacks it attaches
(loss history, the NaN stop, AdaLoRA's per-step reallocation) are in
`peftlab.callbacks`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import adapters, data, devices, models, threads
from .callbacks import AdaLoraCallback, HistoryCallback, NonFiniteLossError, StopOnNonFiniteLoss
from .config import ConfigError, RunConfig, with_overrides
from .measure import PeakMemory, track_peak_memory
from .models import logits_positions, response_logits_supported  # noqa: F401  (train.<name>: tests, bench)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank under torchrun / accelerate (0 when run alone)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def total_optimizer_steps(config: RunConfig, n_examples: int, n_processes: int | None = None) -> int:
    """Optimizer steps the run will take, as Trainer counts them.

    AdaLoRA's schedule (tinit, tfinal, total_step) is expressed in these steps.
    """
    if config.max_steps > 0:
        return config.max_steps
    n_processes = n_processes or world_size()
    batches = math.ceil(n_examples / (config.per_device_train_batch_size * n_processes))
    per_epoch = max(1, math.ceil(batches / config.gradient_accumulation_steps))
    return max(1, math.ceil(per_epoch * config.num_train_epochs))


# Below this many shared tokens the second forward call costs more than it saves.
MIN_SHARED_PREFIX = 8


def prefix_sharing_supported(model) -> bool:
    """Whether a batch's shared opening tokens may run once (see CourseTrainer): no active dropout (its noise
    differs per row), no gradient checkpointing (it turns the cache off), and a cache that keeps every token."""
    if getattr(model, "is_gradient_checkpointing", False):
        return False
    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
        return False
    config = getattr(model, "config", None)
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
        return False
    return not (getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None))


def shared_prefix(inputs: dict, first_labelled: int) -> int:
    """How many opening tokens every row of the batch shares (same ids, none padding), capped so that the
    first position whose logits the loss needs stays in the per-row part; 0 when too few to be worth it."""
    if set(inputs) - {"input_ids", "attention_mask", "labels"} or inputs["input_ids"].shape[0] < 2:
        return 0
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    same = (ids == ids[:1]).all(0)
    if mask is not None:
        same &= (mask == 1).all(0)
    n = int(same.long().cumprod(0).sum())
    n = min(n, first_labelled, ids.shape[1] - 1)
    return n if n >= MIN_SHARED_PREFIX else 0


def forward_with_shared_prefix(model, inputs: dict, n: int, keep: torch.Tensor):
    """The model's forward over a batch whose first `n` tokens are the same in every row: those run once,
    batch size 1, and their key/value cache is repeated across the rows; the rest runs on that cache.
    Positions and the causal mask are those of one forward over the whole rows. `keep` indexes the whole rows."""
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    head = model(input_ids=ids[:1, :n], attention_mask=None if mask is None else mask[:1, :n], use_cache=True,
                 logits_to_keep=1)
    cache = head.past_key_values
    cache.batch_repeat_interleave(ids.shape[0])
    return model(input_ids=ids[:, n:], attention_mask=mask, past_key_values=cache, use_cache=True,
                 logits_to_keep=keep - n)


@functools.cache
def _course_trainer():
    """CourseTrainer, defined on first use: importing transformers' Trainer takes seconds."""
    from transformers import Trainer

    class CourseTrainer(Trainer):
        """transformers' Trainer with one change: a causal LM's training loss projects onto the vocabulary only
        the positions that carry a label.

        The model's own forward computes logits at every position, (B, T, V), then the loss masks out all but
        the response. With SmolLM2's 49,152-token vocabulary the lm_head is a fifth of a training step's
        arithmetic and its float32 logits the largest activation, and about four in five positions are prompt
        or padding. The loss is the same sum over the same tokens divided by the same count (the tests check
        it against transformers' own, and the gradients too): what changes is only the work.

        A second saving on top: the rows of a batch open with the same tokens (the chat template's system
        prompt and the task's instruction, 37 of the case study's 61 tokens a row on SmolLM2). Where the
        network has no dropout, those tokens compute the same keys and values in every row, so they run once
        and their cache is repeated across the batch (`shared_prefix`); the gradient through the repeat sums
        over the rows exactly as the rows' own copies would. Same loss and gradients again (tested)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.response_logits = response_logits_supported(self.model)
            self.share_prefix = self.response_logits and prefix_sharing_supported(self.model)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.get("labels")
            if return_outputs or labels is None or not self.response_logits or self.label_smoother is not None \
                    or self.compute_loss_func is not None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            keep = logits_positions(labels)  # (K,)
            shared = shared_prefix(inputs, int(keep[0]) if len(keep) else 0) if self.share_prefix else 0
            if shared:
                outputs = forward_with_shared_prefix(model, inputs, shared, keep)
            else:
                outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=keep)
            logits = outputs.logits.float()  # (B, K, V)
            target = labels[:, 1:][:, keep]  # (B, K), -100 where this row has no label
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100,
                                                     reduction="sum")
            # transformers' causal LM loss: the sum over the accumulated batch's tokens when the Trainer counts
            # them (num_items_in_batch), else the mean over this batch's tokens.
            if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
                loss = loss / num_items_in_batch
                if self.args.average_tokens_across_devices:
                    loss = loss * self.accelerator.num_processes
            else:
                loss = loss / (target != -100).sum().clamp(min=1)
            return loss

    return CourseTrainer


@dataclass
class TrainResult:
    model: object
    tokenizer: object
    trainer: object
    config: RunConfig
    history: HistoryCallback
    train_stats: data.DataStats
    eval_stats: data.DataStats
    eval_dataset: object
    eval_rows: list
    wall_s: float = 0.0
    tokens_seen: int = 0
    peak: PeakMemory = field(default_factory=PeakMemory)
    total_steps: int = 0
    adalora_calls: int = 0
    # CPU runs: (step, torch threads) at the start and whenever the count followed other processes
    # (peftlab.threads); empty where the count was pinned or the device is a GPU
    thread_changes: list = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_seen / self.wall_s if self.wall_s else 0.0


def load_data(config: RunConfig, tokenizer):
    """Tokenized train and eval sets, their stats, and the raw eval rows."""
    train_rows = data.load_dataset_file(config.train_file) if config.train_file else data.load_course_data("train")
    eval_rows = data.load_dataset_file(config.eval_file) if config.eval_file else data.load_course_data("test")
    if config.max_train_samples:
        train_rows = train_rows.select(range(min(config.max_train_samples, len(train_rows))))
    train_src = config.train_file or "shakespeare_train.jsonl"
    eval_src = config.eval_file or "shakespeare_test.jsonl"
    train_ds, train_stats = data.tokenize_dataset(
        train_rows, tokenizer, config.max_length, config.system_prompt, source=train_src
    )
    eval_ds, eval_stats = data.tokenize_dataset(
        eval_rows, tokenizer, config.max_length, config.system_prompt, source=eval_src
    )
    return train_ds, train_stats, eval_ds, eval_stats, list(eval_rows)


def training_arguments(config: RunConfig, device: torch.device, progress: bool = True):
    from transformers import TrainingArguments

    dtype = str(devices.pick_dtype(device, config.dtype)).removeprefix("torch.")
    on_gpu = device.type == "cuda"
    kwargs = dict(
        output_dir=config.output_dir,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=max(8, config.per_device_train_batch_size),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        eval_strategy="epoch" if config.eval_each_epoch else "no",
        save_strategy=config.save_strategy,
        save_total_limit=2,
        report_to="none",
        disable_tqdm=not progress,
        use_cpu=device.type == "cpu",
        bf16=on_gpu and dtype == "bfloat16",
        fp16=on_gpu and dtype == "float16",
        train_sampling_strategy=config.train_sampling_strategy,
        include_num_input_tokens_seen="non_padding",
        # Trainer's default hides NaN/inf losses from the logs; StopOnNonFiniteLoss needs to see them.
        logging_nan_inf_filter=False,
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        # A k-bit base got checkpointing (or not) from prepare_model_for_kbit_training in
        # models.load_model; Trainer must not switch it on a second time.
        **checkpointing_arguments(config.gradient_checkpointing and config.quantization == "none"),
    )
    return TrainingArguments(**kwargs)


def checkpointing_arguments(enabled: bool, accepted: set[str] | None = None) -> dict:
    """The gradient-checkpointing keywords this transformers' TrainingArguments accepts.

    transformers 5.23 renamed `gradient_checkpointing` to `activation_checkpointing`;
    Colab's 5.15 (and everything before 5.23) knows only the old name.
    """
    if accepted is None:
        import dataclasses

        from transformers import TrainingArguments

        accepted = {f.name for f in dataclasses.fields(TrainingArguments)}
    name = "activation_checkpointing" if "activation_checkpointing" in accepted else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False}}


def train(
    config: RunConfig,
    progress: bool = True,
    resume: bool | str = False,
    model=None,
    tokenizer=None,
    callbacks: list | None = None,
    pad_to: int | None = None,
    **config_changes,
) -> TrainResult:
    """Fine-tune `config.model_name` with `config.method` on the configured data.

    `resume=True` continues from the newest checkpoint in output_dir (a path
    picks one). `pad_to` pads every batch to a fixed length: the naive
    baseline the throughput benchmark measures against. Keyword arguments
    such as `save_strategy="no"` change RunConfig fields, so the result's
    config (and the record written from it) holds every setting the run used.
    """
    from transformers import set_seed
    from transformers.trainer_utils import get_last_checkpoint

    if config_changes:
        known = {f.name for f in dataclasses.fields(RunConfig)}
        for key in config_changes:
            if key not in known:
                raise ConfigError(
                    f"train({key}=...): not a RunConfig field; every training setting goes through RunConfig "
                    "so that the run record holds it (`peftlab help-config` lists the fields)."
                )
        config = with_overrides(config, **config_changes)
    set_seed(config.seed)
    cpu_share = threads.CpuShare()  # what other processes use while this run sets up, for the first fit
    if tokenizer is None:
        tokenizer = models.load_tokenizer(config.model_name)
    if model is None:
        model = models.load_model(config)
    device = next(model.parameters()).device
    train_ds, train_stats, eval_ds, eval_stats, eval_rows = load_data(config, tokenizer)
    total = total_optimizer_steps(config, len(train_ds))
    if not hasattr(model, "peft_config"):
        model = adapters.attach(model, config, total_step=total)

    history = HistoryCallback()
    nan_guard = StopOnNonFiniteLoss()
    cbs = [history, nan_guard, *(callbacks or [])]
    adapt = None
    if device.type == "cpu" and not threads.pinned():
        adapt = threads.AdaptThreads()
        cbs.append(adapt)
    ada = None
    if config.method == "adalora":
        ada = AdaLoraCallback(model)
        cbs.append(ada)
    args = training_arguments(config, device, progress)
    trainer = _course_trainer()(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds if config.eval_each_epoch else None,
        data_collator=data.make_collator(tokenizer, pad_to=pad_to),
        processing_class=tokenizer,
        callbacks=cbs,
    )
    if not progress:
        # Without a progress bar transformers prints every log dict; the history keeps them instead.
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    checkpoint = None
    if resume:
        checkpoint = resume if isinstance(resume, str) else get_last_checkpoint(config.output_dir)
        if checkpoint is None:
            raise FileNotFoundError(f"resume=True but {config.output_dir} holds no checkpoint-* directory.")
    if adapt is not None:
        adapt.changes.append((0, threads.fit(cpu_share) or torch.get_num_threads()))
        adapt.share = threads.CpuShare()
    start = time.perf_counter()
    with track_peak_memory(device) as peak:
        trainer.train(resume_from_checkpoint=checkpoint)
    wall = time.perf_counter() - start
    if nan_guard.bad is not None:
        dtype = str(devices.pick_dtype(device, config.dtype)).removeprefix("torch.")
        raise NonFiniteLossError(nan_guard.message(config, dtype))
    return TrainResult(
        model=trainer.model,
        tokenizer=tokenizer,
        trainer=trainer,
        config=config,
        history=history,
        train_stats=train_stats,
        eval_stats=eval_stats,
        eval_dataset=eval_ds,
        eval_rows=eval_rows,
        wall_s=wall,
        tokens_seen=int(trainer.state.num_input_tokens_seen or 0),
        peak=peak,
        total_steps=total,
        adalora_calls=ada.calls if ada else 0,
        thread_changes=adapt.changes if adapt else [],
    )


def save_outputs(result: TrainResult) -> Path:
    """Adapter (or full model) and tokenizer into output_dir/adapter."""
    out = Path(result.config.output_dir) / "adapter"
    if hasattr(result.model, "peft_config"):
        adapters.save_adapter(result.model, out)
    else:
        result.model.save_pretrained(out)
    result.tokenizer.save_pretrained(out)
    return out
