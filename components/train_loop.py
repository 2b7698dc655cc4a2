"""The training loop: Keras layers and optimizer, stepped by tf.distribute, watched by Keras callbacks.

Why not `model.fit`: under MultiWorkerMirroredStrategy, Keras 3.15's `fit` fails with "Attempt to
convert a value (PerReplica:{...}) to a Tensor" (keras-team/keras#20585, tensorflow/tensorflow#72388,
both open; reproduced here with two workers on 127.0.0.1), and Keras's own `keras.distribution` API
runs on JAX only. This loop does what `fit` does, with one code path for every strategy (the default
one, MirroredStrategy, MultiWorkerMirroredStrategy): `strategy.run` of one step, several steps per
call into TensorFlow, and the same callback hooks in the same order, so TensorBoard, the epoch
checkpoint, early stopping and the time budget work unchanged.

What a multi-worker run adds: the workers must take the same decisions, or the next collective
waits forever. After every call into TensorFlow the chief's `stop_training` and the `shared`
variables (the learning-rate schedule's planned length, which the time budget moves by the chief's
clock) are broadcast to all workers. Validation runs on each worker over the whole validation split,
without collectives: the weights are identical, so the results are.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from components.errors import WorkerLost, WorkersDisagree, first_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopSettings:
    """What the loop needs besides the model: batch, steps, loss and compilation."""

    global_batch: int  # examples per step over all replicas
    steps_per_epoch: int
    steps_per_execution: int  # steps per call into TensorFlow; divides steps_per_epoch
    num_classes: int
    label_smoothing: float
    jit_compile: bool  # XLA for the step
    num_workers: int = 1  # > 1: decisions are broadcast from the chief after each execution


class TrainingLoop:
    """Trains a logits model under a tf.distribute strategy; the model must be compiled with its optimizer."""

    def __init__(self, model: keras.Model, strategy: tf.distribute.Strategy, settings: LoopSettings,
                 shared: Sequence[tf.Variable] = ()):
        self.model, self.strategy, self.settings, self.shared = model, strategy, settings, list(shared)
        self.loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=settings.label_smoothing,
                                                         reduction=None)
        self.confusion = np.zeros((settings.num_classes, settings.num_classes), np.int64)  # of the last validation
        # As Keras's compile does: op determinism (process-wide, once a run asked for it) has no XLA kernels
        # for some gradients (MaxPoolGrad), so it turns XLA off.
        from tensorflow.python.framework.config import is_op_determinism_enabled  # what Keras imports too

        self._xla = settings.jit_compile and not is_op_determinism_enabled()
        self._make_step_functions()
        self._evaluate = tf.function(self._evaluate_batch)
        self._broadcast = tf.function(self._from_chief)
        if not model.optimizer.built:  # built already when later phases train more weights (HeadFirst)
            with strategy.scope():  # its slots now, not inside the step function, where a strategy cannot make them
                model.optimizer.build(model.trainable_variables)

    def _make_step_functions(self) -> None:
        """The step functions, traced on first call for the weights trainable now (`_trainable` remembers which)."""
        self._trainable = self._trainable_ids()
        self._replica_step = tf.function(self._step, jit_compile=True) if self._xla else self._step
        # One step without a loop around it: the profiler's Overview ignores step markers around a tf.while_loop.
        self._run_steps = tf.function(self._steps if self.settings.steps_per_execution > 1 else self._one_step)

    def _trainable_ids(self) -> tuple[int, ...]:
        return tuple(id(variable) for variable in self.model.trainable_variables)

    def fit(self, dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset], validation: tf.data.Dataset,
            epochs: int, first_epoch: int, callbacks: Sequence[keras.callbacks.Callback]) -> dict[str, list[float]]:
        """Epochs `first_epoch..epochs-1`, each followed by validation; returns the history of their logs.

        Args:
            dataset_fn: per input pipeline (one per worker), its endless training batches of the per-replica
                size, epoch after epoch, each epoch `steps_per_epoch` steps long.
            validation: batches of (images, one-hot labels) of the whole validation split.
            epochs, first_epoch: which epochs to run.
            callbacks: Keras callbacks, called in order as `fit` calls them.

        Raises:
            WorkerLost: with several workers, one of them stopped (killed, lost its network).
        """
        try:
            return self._fit(dataset_fn, validation, epochs, first_epoch, callbacks)
        except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
                tf.errors.FailedPreconditionError, tf.errors.InternalError) as error:
            if self.settings.num_workers < 2:
                raise
            reason = first_line(error)
            raise WorkerLost(f"a worker stopped during training ({type(error).__name__}: {reason}); start every "
                             "worker again with the same command: training resumes after the last finished "
                             "epoch") from None

    def check_workers_agree(self, first_epoch: int, setup: str) -> None:
        """Refuse to train when a worker starts from another epoch, other weights or another `setup` than the chief.

        Each worker restores the chief's checkpoint and resolves its own plan; a stale view of shared
        storage, or another host's packages or devices, would otherwise make the replicas apply the
        same gradients to different weights, and the model saved would not be the one trained.

        Raises:
            WorkersDisagree: on every worker, naming what differs.
        """
        if self.settings.num_workers < 2:
            return
        weights = sum(float(np.abs(np.asarray(value, np.float64)).sum()) for value in self.model.get_weights())
        mine = np.array([first_epoch, zlib.crc32(setup.encode()) % 2**24, weights], np.float32)
        chiefs = self._broadcast(tf.constant(mine)).numpy()
        differs = [name for name, a, b in zip(("the epoch resumed from", "the plan", "the weights"), mine, chiefs)
                   if not np.isclose(a, b, rtol=1e-6)]
        count = self.strategy.reduce(tf.distribute.ReduceOp.SUM, self.strategy.run(
            lambda: tf.constant(float(bool(differs)))), axis=None)
        if float(count):
            what = f"{', '.join(differs)} differ{'s' * (len(differs) == 1)}" if differs else "another worker differs"
            raise WorkersDisagree(
                f"the workers do not start training alike ({what} from the chief's: epoch {int(chiefs[0]) + 1}, "
                f"{setup}); every worker must run the same code and packages and see the chief's --workdir on "
                "shared storage")

    def _fit(self, dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset], validation: tf.data.Dataset,
             epochs: int, first_epoch: int, callbacks: Sequence[keras.callbacks.Callback]) -> dict[str, list[float]]:
        """`fit`, without turning a lost worker into one line."""
        batches = iter(self.strategy.distribute_datasets_from_function(dataset_fn))
        hooks = _Hooks(callbacks, self.model)
        history: dict[str, list[float]] = {}
        self.model.stop_training = False
        hooks.call("on_train_begin", {})
        for epoch in range(first_epoch, epochs):
            hooks.call("on_epoch_begin", epoch, {})
            logs = self._train_epoch(batches, hooks)
            hooks.call("on_test_begin", {})
            validation_logs = self.validate(validation)
            hooks.call("on_test_end", validation_logs)
            logs.update({f"val_{name}": value for name, value in validation_logs.items()})
            hooks.call("on_epoch_end", epoch, logs)  # callbacks may add to `logs` (the learning rate)
            for name, value in logs.items():
                history.setdefault(name, []).append(float(value))
            log.info("epoch %d/%d: %s", epoch + 1, epochs, " ".join(f"{k} {v:.4f}" for k, v in logs.items()))
            self._agree()
            if self.model.stop_training:
                break
        hooks.call("on_train_end", {})
        return history

    def validate(self, batches: tf.data.Dataset) -> dict[str, float]:
        """Loss and accuracy over `batches` on this worker alone; keeps the confusion matrix."""
        loss_sum, confusion = 0.0, np.zeros_like(self.confusion)
        for images, labels in batches:
            batch_loss, batch_confusion = self._evaluate(images, labels)
            loss_sum += float(batch_loss)
            confusion += batch_confusion.numpy()
        self.confusion = confusion
        count = max(1, int(confusion.sum()))
        return {"loss": loss_sum / count, "accuracy": float(np.trace(confusion)) / count}

    def _train_epoch(self, batches, hooks: _Hooks) -> dict[str, float]:
        if self._trainable_ids() != self._trainable:  # a callback froze or unfroze layers (HeadFirst)
            self._make_step_functions()
        loss_sum = correct = 0.0
        steps_done = 0
        execution = self.settings.steps_per_execution
        while steps_done < self.settings.steps_per_epoch and not self.model.stop_training:
            hooks.call("on_train_batch_begin", steps_done, {})
            batch_loss, batch_correct = self._run_steps(batches, tf.constant(execution))
            loss_sum, correct = loss_sum + float(batch_loss), correct + float(batch_correct)
            steps_done += execution
            seen = steps_done * self.settings.global_batch
            hooks.call("on_train_batch_end", steps_done - 1, {"loss": loss_sum / seen, "accuracy": correct / seen})
            self._agree()
        seen = max(1, steps_done * self.settings.global_batch)
        return {"loss": loss_sum / seen, "accuracy": correct / seen}

    def _steps(self, batches, count: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """`count` training steps in one call; the summed loss and number of right answers over all replicas."""
        loss_sum, correct = tf.constant(0.0), tf.constant(0.0)
        for _ in tf.range(count):
            images, labels = next(batches)
            step_loss, step_correct = self.strategy.run(self._replica_step, args=(images, labels))
            loss_sum += self.strategy.reduce(tf.distribute.ReduceOp.SUM, step_loss, axis=None)
            correct += self.strategy.reduce(tf.distribute.ReduceOp.SUM, step_correct, axis=None)
        return loss_sum, correct

    def _one_step(self, batches, count: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """`_steps` for executions of one step."""
        images, labels = next(batches)
        step_loss, step_correct = self.strategy.run(self._replica_step, args=(images, labels))
        return (self.strategy.reduce(tf.distribute.ReduceOp.SUM, step_loss, axis=None),
                self.strategy.reduce(tf.distribute.ReduceOp.SUM, step_correct, axis=None))

    def _step(self, images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """One replica's step: the loss averaged over the global batch, so summed gradients are the mean's."""
        optimizer = self.model.optimizer
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            per_example = self.loss(labels, logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.settings.global_batch)
            if self.model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(self.model.losses))
            scaled = optimizer.scale_loss(loss)  # mixed_float16: Keras's LossScaleOptimizer scales it
        gradients = tape.gradient(scaled, self.model.trainable_variables)
        optimizer.apply(gradients, self.model.trainable_variables)  # all-reduces the gradients across replicas
        right = tf.cast(tf.argmax(logits, -1) == tf.argmax(labels, -1), tf.float32)
        return tf.reduce_sum(per_example), tf.reduce_sum(right)

    def _evaluate_batch(self, images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The summed loss and the confusion matrix of one batch."""
        logits = self.model(images, training=False)
        confusion = tf.math.confusion_matrix(tf.argmax(labels, -1), tf.argmax(logits, -1),
                                             num_classes=self.settings.num_classes, dtype=tf.int64)
        return tf.reduce_sum(self.loss(labels, logits)), confusion

    def _agree(self) -> None:
        """Every worker takes the chief's stop decision and shared values (nothing to do on one worker)."""
        if self.settings.num_workers < 2:
            return
        values = [float(self.model.stop_training)] + [float(variable.numpy()) for variable in self.shared]
        agreed = self._broadcast(tf.constant(values, tf.float32)).numpy()
        self.model.stop_training = bool(agreed[0])
        for variable, value in zip(self.shared, agreed[1:]):
            variable.assign(value)

    def _from_chief(self, values: tf.Tensor) -> tf.Tensor:
        """`values` as replica 0 (on the chief) has them: only it adds its own to a sum over replicas."""
        def contribute() -> tf.Tensor:
            first = tf.distribute.get_replica_context().replica_id_in_sync_group == 0
            return tf.where(first, values, tf.zeros_like(values))

        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, self.strategy.run(contribute), axis=None)


class _Hooks:
    """Calls each callback's hook in order with the same `logs` dict, so one callback's additions reach the next.

    (Keras's CallbackList copies `logs` before calling the callbacks, so an addition such as the
    learning rate would not reach the history.)
    """

    def __init__(self, callbacks: Sequence[keras.callbacks.Callback], model: keras.Model):
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            callback.set_model(model)

    def call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

