"""What training shows: the validation confusion matrix after every epoch, the learning rate in the history."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from components.training_logs import ConfusionCounts, LearningRateLog


def _model(num_classes: int, counts: ConfusionCounts, steps_per_execution: int = 1) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(num_classes)])
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy", counts], steps_per_execution=steps_per_execution)
    return model


def _data(num: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num)
    features = rng.normal(size=(num, 6)).astype(np.float32)
    features[np.arange(num), labels] += 1.5  # learnable, not perfectly
    return features, labels


class _Snapshots(keras.callbacks.Callback):
    """The counts and the validation split's true confusion matrix at every epoch's end."""

    def __init__(self, counts: ConfusionCounts, features: np.ndarray, labels: np.ndarray, num_classes: int):
        super().__init__()
        self.counts, self.features, self.labels, self.num_classes = counts, features, labels, num_classes
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []

    def on_epoch_end(self, epoch, logs=None):
        predicted = self.model.predict(self.features, verbose=0).argmax(axis=1)
        expected = confusion_matrix(self.labels, predicted, labels=list(range(self.num_classes)))
        self.pairs.append((self.counts.matrix(), expected))


def test_at_each_epoch_end_the_counts_are_the_validation_splits_confusion_matrix():
    num_classes = 4
    counts = ConfusionCounts(num_classes)
    model = _model(num_classes, counts, steps_per_execution=3)
    train, val = _data(300, num_classes, 1), _data(90, num_classes, 2)
    snapshots = _Snapshots(counts, *val, num_classes)
    history = model.fit(train[0], keras.ops.one_hot(train[1], num_classes), batch_size=16, epochs=3,
                        validation_data=(val[0], keras.ops.one_hot(val[1], num_classes)), verbose=0,
                        callbacks=[snapshots])
    for matrix, expected in snapshots.pairs:
        np.testing.assert_array_equal(matrix, expected)
        assert matrix.sum() == 90  # the validation split only, not the training batches
    assert not {key for key in history.history if "confusion" in key}  # a matrix is no scalar to log
    assert len({matrix.tobytes() for matrix, _ in snapshots.pairs}) > 1  # it follows training


def test_learning_rate_log_puts_the_current_rate_in_the_history():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
    features = np.zeros((8, 6), np.float32)
    history = model.fit(features, np.zeros((8, 2), np.float32), batch_size=4, epochs=3, verbose=0,
                        callbacks=[LearningRateLog()])
    # Two steps an epoch: the rate after steps 2, 4 and 6.
    assert history.history["learning_rate"] == pytest.approx([0.1 * 0.5 ** 2, 0.1 * 0.5 ** 4, 0.1 * 0.5 ** 6])
