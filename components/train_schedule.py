"""How long training runs and which weights it keeps: the schedule, the time budget, the best epoch.

Each piece is a Keras schedule or callback whose state `EpochCheckpoint` (in train.py) saves after
every epoch, so a resumed run carries on with the same plan, the same best epoch and the time
already spent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

# Epochs of `train.epochs=0`: enough to see about this many images, within these bounds.
IMAGES_TO_SEE, MIN_EPOCHS, MAX_EPOCHS = 60_000, 6, 60


def planned_epochs(epochs: int, num_examples: int) -> int:
    """`train.epochs`, or for 0 an epoch count sized to the data: small sets need more passes."""
    if epochs:
        return epochs
    return min(MAX_EPOCHS, max(MIN_EPOCHS, round(IMAGES_TO_SEE / max(num_examples, 1))))


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over the first `warmup` share of the steps, then a cosine to 0.

    The planned number of steps is a variable: under a time budget, `TimeBudget` moves it as it
    learns how many steps the budget buys, and the decay ends when the budget does.
    """

    def __init__(self, peak: float, warmup: float, total_steps: int):
        self.peak, self.warmup = peak, warmup
        self.total_steps = tf.Variable(float(total_steps), trainable=False, dtype=tf.float32, name="total_steps")

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup_steps = tf.maximum(self.warmup * self.total_steps, 1.0)
        decay = tf.clip_by_value((step - warmup_steps) / tf.maximum(self.total_steps - warmup_steps, 1.0), 0, 1)
        return tf.where(step < warmup_steps, self.peak * (step + 1) / warmup_steps,
                        0.5 * self.peak * (1 + tf.cos(math.pi * decay)))

    def get_config(self) -> dict:
        return {"peak": self.peak, "warmup": self.warmup, "total_steps": float(self.total_steps.numpy())}


class TimeBudget(keras.callbacks.Callback):
    """Ends training within `seconds`, with the learning-rate schedule planned to end there too.

    After each execution it measures steps per second (leaving out the first execution, which
    includes tracing), plans the schedule's last step as the one the remaining time reaches, less
    the time of a validation pass, and stops when that step or the time is reached. Validation
    still scores the last (partial) epoch, so the best weights are chosen from everything trained.
    """

    def __init__(self, seconds: float, schedule: WarmupCosine, most_steps: int,
                 clock: Callable[[], float] = time.perf_counter):
        """
        Args:
            seconds: the budget, first execution's tracing and validation included.
            schedule: the schedule whose last step is moved to where the budget ends.
            most_steps: the step the schedule may not be moved past (the planned epochs' end).
            clock: seconds from any fixed start; tests give a fake one to get exact decisions.
        """
        super().__init__()
        self.seconds, self.schedule, self.most_steps, self.clock = seconds, schedule, most_steps, clock
        self.spent_before = 0.0  # in earlier, interrupted sessions of the same training
        self.validation_seconds = 0.0
        self.started = self._test_started = 0.0
        self.rate_since: float | None = None  # None until the first execution has ended
        self.rate_steps = 0
        self.stopped = False

    def spent(self) -> float:
        return self.spent_before + self.clock() - self.started

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.started, self.rate_since = self.clock(), None

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        iterations = self.model.optimizer.iterations  # int() refuses it under MultiWorkerMirroredStrategy: .numpy()
        step = int(iterations.numpy() if hasattr(iterations, "numpy") else iterations)
        if self.rate_since is None:  # the first execution traced the step function: not a rate to plan by
            self.rate_since, self.rate_steps = self.clock(), step
            return
        left = self.seconds - self.spent() - self.validation_seconds
        rate = (step - self.rate_steps) / max(self.clock() - self.rate_since, 1e-9)
        planned = min(self.most_steps, step + max(left, 0.0) * rate)
        self.schedule.total_steps.assign(max(planned, 1.0))
        if step >= planned or left <= 0:
            self.stopped = self.model.stop_training = True

    def on_test_begin(self, logs: dict | None = None) -> None:
        self._test_started = self.clock()

    def on_test_end(self, logs: dict | None = None) -> None:
        self.validation_seconds = self.clock() - self._test_started

    def state(self) -> dict[str, np.ndarray]:
        return {"budget_spent": np.array(self.spent()), "budget_stopped": np.array(self.stopped),
                "budget_total_steps": np.array(float(self.schedule.total_steps.numpy()))}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.spent_before, self.stopped = float(state["budget_spent"]), bool(state["budget_stopped"])
        self.schedule.total_steps.assign(float(state["budget_total_steps"]))


class KeepBest(keras.callbacks.Callback):
    """Remembers the weights of the best epoch on validation; stops after `patience` epochs without one.

    Best is the lowest validation loss, Keras's default: on a small validation split, accuracy moves
    in steps of one image and an early lucky epoch would stop training. `patience` 0 never stops early.
    Keras's EarlyStopping keeps its best weights only in memory, where a resumed
    run would lose them; these are part of the epoch checkpoint.
    """

    def __init__(self, patience: int):
        super().__init__()
        self.patience = patience
        self.best_score: float | None = None
        self.best_epoch = -1
        self.best_weights: list[np.ndarray] = []
        self.stopped = False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        score = -float(logs["val_loss"])
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_epoch = score, epoch
            self.best_weights = [np.array(weight) for weight in self.model.get_weights()]
        elif self.patience and epoch - self.best_epoch >= self.patience:
            self.stopped = self.model.stop_training = True

    def restore(self, model: keras.Model) -> None:
        """Give `model` the best epoch's weights."""
        if self.best_weights:
            model.set_weights(self.best_weights)

    def state(self) -> dict[str, np.ndarray]:
        weights = {f"best_{index}": weight for index, weight in enumerate(self.best_weights)}
        return {"best_score": np.array(-np.inf if self.best_score is None else self.best_score),
                "best_epoch": np.array(self.best_epoch), "best_stopped": np.array(self.stopped), **weights}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.best_epoch, self.stopped = int(state["best_epoch"]), bool(state["best_stopped"])
        self.best_score = float(state["best_score"]) if self.best_epoch >= 0 else None
        self.best_weights = [state[f"best_{index}"] for index in range(len(self.model.get_weights()))
                             if f"best_{index}" in state]


class EpochTimer(keras.callbacks.Callback):
    """Seconds each epoch spent on training steps, validation left out: what throughput is measured on."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_test_begin(self, logs: dict | None = None) -> None:
        if self._started:  # validation closes the epoch's training steps
            self.seconds.append(time.perf_counter() - self._started)
            self._started = 0.0

    def steady_seconds(self) -> float | None:
        """The median epoch's training seconds, the first epoch (which traces the step) left out."""
        steady = sorted(self.seconds[1:]) or self.seconds
        return steady[len(steady) // 2] if steady else None
