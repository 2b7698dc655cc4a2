"""Watching the real training loop from a test: its weights at the start and after each epoch, its first step.

`record_training(monkeypatch)` makes every `components.train.train` call of the test (through the
pipeline or directly) hand its loop one more callback, and run one step per call into TensorFlow, so
the loss the loop reports after its first call is the first step's.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from components.train_loop import TrainingLoop
from components.warm_start import weighted_leaves

Weights = list[list[np.ndarray]]  # per layer that holds weights (`weighted_leaves` order), its arrays


def weights_of(model: keras.Model) -> Weights:
    """Copies of every weight, trainable or not (batch norms' moving statistics too), layer by layer."""
    return [[weight.numpy().copy() for weight in layer.weights] for layer in weighted_leaves(model)]


def same_weights(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    """Bit for bit: the same shapes and values."""
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


class TrainingRecorder(keras.callbacks.Callback):
    """What the loop's model held when training began and after each epoch, and its first batch and loss."""

    def __init__(self):
        super().__init__()
        self.layers: list[keras.Layer] = []  # the model's weighted layers, in `weighted_leaves` order
        self.at_start: Weights = []
        self.after_epoch: list[Weights] = []
        self.trainable_after_epoch: list[list[bool]] = []
        self.first_batch: tuple[np.ndarray, np.ndarray] | None = None  # (images, one-hot labels)
        self.first_loss: float | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.layers = weighted_leaves(self.model)
        self.at_start = weights_of(self.model)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.first_loss is None:
            self.first_loss = float(logs["loss"])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.after_epoch.append(weights_of(self.model))
        self.trainable_after_epoch.append([layer.trainable for layer in self.layers])

    def index(self, name: str) -> int:
        """The position of the weighted layer called `name`."""
        return [layer.name for layer in self.layers].index(name)

    def is_batch_norm(self, index: int) -> bool:
        return isinstance(self.layers[index], keras.layers.BatchNormalization)


def record_training(monkeypatch) -> TrainingRecorder:
    """A recorder that every training loop of this test calls last, after its own callbacks."""
    recorder = TrainingRecorder()
    fit = TrainingLoop.fit

    def recording_fit(self, dataset_fn, validation, epochs, first_epoch, callbacks):
        # The loop's input pipeline is seeded by (seed, epoch) only: a second one yields the same first batch.
        images, labels = next(iter(dataset_fn(tf.distribute.InputContext())))
        recorder.first_batch = (images.numpy(), labels.numpy())
        return fit(self, dataset_fn, validation, epochs, first_epoch, [*callbacks, recorder])

    monkeypatch.setattr(TrainingLoop, "fit", recording_fit)
    monkeypatch.setattr("components.train.steps_per_execution", lambda steps: 1)
    return recorder
