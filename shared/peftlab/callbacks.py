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


class Pace(TrainerCallback):
    """Say, a few optimizer steps in, how long the rest of the run will take on this machine.

    Step times differ several-fold between CPUs that all compute float32 with AVX2 (the README's
    *Which dtype your CPU gets* has three), so a run measures its own pace instead of quoting one machine's.
    The pace is timed from the end of step `skip` to the end of step `skip + over`: the first steps
    also pay one-off costs (thread fitting, kernel set-up). `after_s` is what the run still does
    after training (the case study's second evaluation, timed on the first); where the projected
    whole run exceeds `budget_s`, the line says so and how to shorten it, and the run goes on.
    """

    def __init__(self, log=print, started: float | None = None, after_s: float = 0.0,
                 budget_s: float | None = None, where: str = "", skip: int = 1, over: int = 3):
        import time

        self.log, self.clock = log, time.perf_counter
        self.started = self.clock() if started is None else started
        self.after_s, self.budget_s, self.where = after_s, budget_s, where
        self.skip, self.over = skip, over
        self.mark: float | None = None
        self.s_per_step: float | None = None
        self.projected_s: float | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.skip:
            self.mark = self.clock()
        elif self.mark is not None and self.s_per_step is None and state.global_step == self.skip + self.over:
            now = self.clock()
            self.s_per_step = (now - self.mark) / self.over
            left = max(0, state.max_steps - state.global_step) * self.s_per_step
            self.projected_s = now - self.started + left + self.after_s
            self.log(self.message(left, state.max_steps))

    def message(self, left: float, steps: int) -> str:
        where = f" on this machine ({self.where})" if self.where else " on this machine"
        line = (f"pace           {self.s_per_step:.2f} s a step{where}: {steps} steps, about "
                f"{_minutes(left)} of training left; the whole run about {_minutes(self.projected_s)}")
        if self.budget_s is not None and self.projected_s > self.budget_s:
            line += (f", more than the {_minutes(self.budget_s)} it is meant to take on 2 idle cores. This CPU "
                     "(or its load) is slower than the ones the course measured (README, Which dtype your CPU "
                     "gets); the run goes on. To shorten it, train fewer epochs (e.g. num_train_epochs=3: the "
                     "README's sweep gives what that costs in quality), or stop other work on the machine.")
        return line + "."


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"
