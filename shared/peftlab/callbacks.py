"""The callbacks the course's training adds to `transformers.Trainer`.

Each one supplies something Trainer lacks: `HistoryCallback` keeps every logged
loss for plots and records; `StopOnNonFiniteLoss` stops at the first NaN or inf
loss and says what to change; `AdaLoraCallback` makes AdaLoRA actually reallocate
its ranks. (`threads.AdaptThreads`, which follows the CPU's other users, lives
beside the thread code.) `train.train` attaches them.
"""

from __future__ import annotations

import math

from transformers import TrainerCallback

from .config import RunConfig


class AdaLoraCallback(TrainerCallback):
    """Call `update_and_allocate` after every optimizer step, before grads are zeroed.

    Without it AdaLoRA never prunes and silently trains like plain LoRA with
    rank init_r. Trainer's `on_optimizer_step` fires exactly there.
    """

    def __init__(self, model):
        self.model = model
        self.calls = 0

    def on_optimizer_step(self, args, state, control, **kwargs):
        peft_model = getattr(self.model, "module", self.model)  # unwrap DDP
        peft_model.base_model.update_and_allocate(state.global_step)
        self.calls += 1


class HistoryCallback(TrainerCallback):
    """Keep every logged loss (train and eval) with its step, for plots and records."""

    def __init__(self):
        self.train: list[tuple[int, float]] = []
        self.train_epoch: list[float] = []  # fractional epoch of each entry of `train`
        self.eval: list[tuple[int, float, float]] = []  # (step, epoch, eval loss)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.train.append((state.global_step, float(logs["loss"])))
            self.train_epoch.append(float(state.epoch or 0))
        if "eval_loss" in logs:
            self.eval.append((state.global_step, float(state.epoch or 0), float(logs["eval_loss"])))

    def epoch_means(self) -> list[tuple[int, float]]:
        """(epoch, mean logged training loss) per epoch, 1-based.

        One logged loss covers a few batches and is noisy; the mean over a whole
        epoch is the training loss to quote (its exp is the training perplexity).
        """
        sums: dict[int, list[float]] = {}
        for epoch, (_, loss) in zip(self.train_epoch, self.train):
            sums.setdefault(max(1, math.ceil(epoch - 1e-9)), []).append(loss)
        return [(e, sum(v) / len(v)) for e, v in sorted(sums.items())]


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss became NaN or infinite."""


class StopOnNonFiniteLoss(TrainerCallback):
    """Stop training at the first logged loss that is NaN or inf, instead of saving a garbage adapter.

    Trainer averages the loss over `logging_steps` steps, and a NaN or inf in
    any of them makes the average non-finite, so the stop comes at the first
    log after it (every step with the course's logging_steps=1). It needs
    `logging_nan_inf_filter=False`, which `training_arguments` sets: Trainer's
    default replaces such losses in its logs by the window's average.
    """

    def __init__(self):
        self.bad: tuple[int, float] | None = None  # (global step, loss) of the first non-finite loss

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.bad is None:
            self.bad = (state.global_step, float(loss))
            control.should_training_stop = True

    def message(self, config: RunConfig, dtype: str) -> str:
        step, loss = self.bad
        in_fp16 = dtype == "float16" or (config.quantization != "none" and config.compute_dtype == "float16")
        hint = (
            "float16 overflows in Qwen2/2.5 (activations beyond 65504): use dtype='float32', or method='qlora' "
            "with compute_dtype='float32' to fit memory, or a GPU with bfloat16"
            if in_fp16
            else f"lower learning_rate (now {config.learning_rate}) or check the data"
        )
        return (
            f"training stopped at step {step}: the loss is {loss}, not a finite number, so the weights are "
            f"no longer usable; do not save or resume from this run's checkpoints. Likely fix: {hint}."
        )
