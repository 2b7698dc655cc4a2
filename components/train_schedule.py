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

# Epochs of `train.epochs=0`: enough to see about this many images, within these bounds. Measured on
# digits, MNIST-like and Fashion-MNIST slices of 4k to 60k images (docs/training.md, "Epochs and data size").
IMAGES_TO_SEE, MIN_EPOCHS, MAX_EPOCHS = 80_000, 6, 46
WARM_START_SHARE = 0.45  # of those epochs' steps for a warm start with the same classes (README: "Warm start")


def planned_epochs(epochs: int, num_examples: int) -> int:
    """`train.epochs`, or for 0 an epoch count sized to the data: small sets need more passes."""
    if epochs:
        return epochs
    return min(MAX_EPOCHS, max(MIN_EPOCHS, round(IMAGES_TO_SEE / max(num_examples, 1))))


def planned_steps(epochs: int, num_examples: int, steps_per_epoch: int, warm: bool = False) -> int:
    """The training steps planned: `planned_epochs` of them, or for a warm start that keeps every layer
    (`warm`) with `train.epochs=0`, WARM_START_SHARE of them (at least an epoch), which may end inside an
    epoch: its weights already fit such data."""
    from_scratch = planned_epochs(epochs, num_examples) * steps_per_epoch
    if epochs or not warm:
        return from_scratch
    return max(steps_per_epoch, math.floor(WARM_START_SHARE * from_scratch))


class StepLimit(keras.callbacks.Callback):
    """Ends training at the planned step when it falls inside an epoch; that epoch is validated as usual."""

    def __init__(self, most_steps: int):
        super().__init__()
        self.most_steps = most_steps

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        iterations = self.model.optimizer.iterations
        if int(iterations.numpy() if hasattr(iterations, "numpy") else iterations) >= self.most_steps:
            self.model.stop_training = True


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over the first `warmup` share of the steps, then a cosine to 0.

    The planned number of steps is a variable: under a time budget, `TimeBudget` moves it as it
    learns how many steps the budget buys, and the decay ends when the budget does.
    """

    def __init__(self, peak: float, warmup: float, total_steps: int, fine_tune_scale: float = 1.0):
        """
        Args:
            peak, warmup, total_steps: the peak rate, the share of steps warming up to it, the steps planned.
            fine_tune_scale: from `fine_tune_from` on (set by `HeadFirst`), the rate is this multiple of
                the cosine's, warmed up again over as many steps as the first warm-up.
        """
        self.peak, self.warmup, self.fine_tune_scale = peak, warmup, fine_tune_scale
        self.total_steps = tf.Variable(float(total_steps), trainable=False, dtype=tf.float32, name="total_steps")
        self.fine_tune_from = tf.Variable(-1.0, trainable=False, dtype=tf.float32, name="fine_tune_from")

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup_steps = tf.maximum(self.warmup * self.total_steps, 1.0)
        decay = tf.clip_by_value((step - warmup_steps) / tf.maximum(self.total_steps - warmup_steps, 1.0), 0, 1)
        rate = tf.where(step < warmup_steps, self.peak * (step + 1) / warmup_steps,
                        0.5 * self.peak * (1 + tf.cos(math.pi * decay)))
        fine_tuning = (self.fine_tune_from >= 0) & (step >= self.fine_tune_from)
        rewarm = tf.minimum((step - self.fine_tune_from + 1) / warmup_steps, 1.0)
        return tf.where(fine_tuning, rate * self.fine_tune_scale * rewarm, rate)

    def get_config(self) -> dict:
        return {"peak": self.peak, "warmup": self.warmup, "total_steps": float(self.total_steps.numpy()),
                "fine_tune_scale": self.fine_tune_scale}


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
        self._trainable = 0  # weights training when the speed was measured
        self.stopped = False

    def spent(self) -> float:
        return self.spent_before + self.clock() - self.started

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.started, self.rate_since = self.clock(), None
        self._trainable = self._num_trainable()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Measure the speed anew when more weights train (`HeadFirst`'s phase two): its steps cost more, and
        a plan by phase one's speed overran a 60 s budget by half. The next execution traces the step again."""
        trainable = self._num_trainable()
        if trainable != self._trainable:
            self._trainable, self.rate_since = trainable, None

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

    def _num_trainable(self) -> int:
        return len(getattr(self.model, "trainable_weights", ()))

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
        # HeadFirst's phase one may not end training, and phase two's patience counts from its own start.
        self.may_stop, self.patience_from = True, 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        score = -float(logs["val_loss"])
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_epoch = score, epoch
            self.best_weights = [np.array(weight) for weight in self.model.get_weights()]
        elif self.may_stop and self.patience and epoch - max(self.best_epoch, self.patience_from) >= self.patience:
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
        self.seconds: dict[int, float] = {}  # by epoch, counted from 0, of this session
        self._epoch: int | None = None
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch, self._started = epoch, time.perf_counter()

    def on_test_begin(self, logs: dict | None = None) -> None:
        if self._started and self._epoch is not None:  # validation closes the epoch's training steps
            self.seconds[self._epoch] = time.perf_counter() - self._started
            self._started = 0.0

    def steady_seconds(self, retraced: tuple[int, ...] = ()) -> float | None:
        """The median epoch's training seconds, leaving out the first epoch (which traces the step) and the
        `retraced` ones (phase two's first traces it again)."""
        first = min(self.seconds, default=0)
        steady = sorted(seconds for epoch, seconds in self.seconds.items() if epoch != first and epoch not in retraced)
        steady = steady or sorted(self.seconds.values())
        return steady[len(steady) // 2] if steady else None


class HeadFirst(keras.callbacks.Callback):
    """Two phases in one training: the new head alone on a frozen body, then the top of the body too.

    Phase one freezes the body, its batch norms in inference mode (a frozen layer is called in
    inference mode in Keras 3). Phase two starts with the first epoch that begins past `head_share`
    of the planned steps: it unfreezes the top `unfreeze_share` of the body's layers, batch norms
    left frozen (their statistics are the pretrained data's; a small batch would overwrite them), and
    the learning rate is scaled down and warmed up again. The decision reads only the step and the
    planned steps, which every worker of a multi-worker run agrees on, so all switch together; the
    training loop retraces its step when the trainable weights change. The optimizer must be built
    over every weight phase two trains, so its variables are the same in both phases.
    """

    def __init__(self, body: list[keras.Layer], head_share: float, unfreeze_share: float, schedule: WarmupCosine,
                 keep_best: KeepBest | None = None):
        """
        Args:
            body: the layers phase one freezes (`components.warm_start`).
            head_share, unfreeze_share: `train.head_share`, `train.unfreeze_share`.
            schedule: the learning rate's, whose `fine_tune_from` marks phase two's first step.
            keep_best: early stopping, which may not stop phase one (the body would never train) and
                counts phase two's patience from its start (its rate starts again near 0).
        """
        super().__init__()
        self.body, self.head_share, self.schedule, self.keep_best = body, head_share, schedule, keep_best
        if keep_best is not None:
            keep_best.may_stop = False
        self.fine_tune_epoch: int | None = None  # the epoch phase two began with, counted from 0
        top = body[len(body) - max(1, math.ceil(unfreeze_share * len(body))):]
        self.unfrozen = [layer for layer in top if not isinstance(layer, keras.layers.BatchNormalization)]
        for layer in body:
            layer.trainable = False

    @property
    def fine_tuning(self) -> bool:
        return float(self.schedule.fine_tune_from.numpy()) >= 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.fine_tuning:
            return
        iterations = self.model.optimizer.iterations
        step = float(iterations.numpy() if hasattr(iterations, "numpy") else iterations)
        if step >= self.head_share * float(self.schedule.total_steps.numpy()):
            self.schedule.fine_tune_from.assign(step)
            self.fine_tune_epoch = epoch
            self._unfreeze()

    def _unfreeze(self) -> None:
        for layer in self.unfrozen:
            layer.trainable = True
        if self.keep_best is not None:
            self.keep_best.may_stop, self.keep_best.patience_from = True, self.fine_tune_epoch or 0

    def state(self) -> dict[str, np.ndarray]:
        return {"fine_tune_from": np.array(float(self.schedule.fine_tune_from.numpy())),
                "fine_tune_epoch": np.array(-1 if self.fine_tune_epoch is None else self.fine_tune_epoch)}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.schedule.fine_tune_from.assign(float(state["fine_tune_from"]))
        self.fine_tune_epoch = None if int(state["fine_tune_epoch"]) < 0 else int(state["fine_tune_epoch"])
        if self.fine_tuning:
            self._unfreeze()
