"""What training shows besides Keras's scalars: the learning rate per epoch, labelled training images
and a confusion matrix on the validation split after every epoch (TensorBoard's Images tab).
"""

from __future__ import annotations

import keras
import numpy as np

from components import plots
from components.tensorboard_log import EventLog


class LearningRateLog(keras.callbacks.Callback):
    """Adds the learning rate at each epoch's end to the logs, so `history.json` keeps it too."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class ConfusionCounts(keras.metrics.Metric):
    """Counts of (true class, predicted class) over the batches since the last reset; logs nothing.

    Keras resets its metrics when validation starts, so at the end of an epoch this holds the
    validation split's confusion matrix, taken from the validation pass's own predictions: no
    second pass over the split (which cost 40 % of a digits epoch as a `predict` call).
    """

    def __init__(self, num_classes: int, name: str = "confusion_counts"):
        super().__init__(name=name)
        self.num_classes = num_classes
        self.counts = self.add_variable(shape=(num_classes, num_classes), initializer="zeros", dtype="float32",
                                        aggregation="sum", name="counts")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        true = keras.ops.one_hot(keras.ops.argmax(y_true, axis=-1), self.num_classes, dtype="float32")
        predicted = keras.ops.one_hot(keras.ops.argmax(y_pred, axis=-1), self.num_classes, dtype="float32")
        self.counts.assign_add(keras.ops.matmul(keras.ops.transpose(true), predicted))

    def reset_state(self) -> None:
        self.counts.assign(keras.ops.zeros((self.num_classes, self.num_classes), dtype="float32"))

    def result(self) -> dict:
        return {}  # read by ConfusionImages, not logged: a matrix is no scalar

    def matrix(self) -> np.ndarray:
        return np.rint(keras.ops.convert_to_numpy(self.counts)).astype(np.int64)


class ConfusionImages(keras.callbacks.Callback):
    """After every epoch, the validation split's confusion matrix as an image in TensorBoard."""

    def __init__(self, event_log: EventLog, counts: ConfusionCounts, class_names: tuple[str, ...]):
        super().__init__()
        self.event_log, self.counts, self.class_names = event_log, counts, class_names

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        matrix = self.counts.matrix()
        accuracy = np.trace(matrix) / max(1, matrix.sum())
        png = plots.quick_confusion_image(matrix, self.class_names,
                                          title=f"validation, epoch {epoch + 1}: accuracy {accuracy:.4f}")
        self.event_log.image("validation confusion matrix", png, epoch,
                             "rows: true class, columns: predicted class; counts on the validation split")


def log_labelled_images(event_log: EventLog, images: np.ndarray, labels: np.ndarray,
                        class_names: tuple[str, ...]) -> None:
    """A grid of training images, each titled with its class, as the model receives them (raw pixels)."""
    if len(images):
        png = plots.image_grid(images, [class_names[label] for label in labels])
        event_log.image("training examples", png, 0, "raw training images with their labels")
