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


class ConfusionImages(keras.callbacks.Callback):
    """After every epoch, the validation split's confusion matrix as an image in TensorBoard.

    It predicts the validation images once more (Keras's validation pass returns only averages);
    on Fashion-MNIST's 5,000 validation images that is well under a second an epoch.
    """

    def __init__(self, event_log: EventLog, images: np.ndarray, labels: np.ndarray,
                 class_names: tuple[str, ...], batch_size: int):
        super().__init__()
        self.event_log, self.images, self.labels = event_log, images, labels
        self.class_names, self.batch_size = class_names, batch_size

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logits = self.model.predict(self.images, batch_size=self.batch_size, verbose=0)
        matrix = confusion_counts(self.labels, np.asarray(logits).argmax(axis=1), len(self.class_names))
        accuracy = np.trace(matrix) / max(1, matrix.sum())
        png = plots.quick_confusion_image(matrix, self.class_names,
                                          title=f"validation, epoch {epoch + 1}: accuracy {accuracy:.4f}")
        self.event_log.image("validation confusion matrix", png, epoch,
                             "rows: true class, columns: predicted class; counts on the validation split")


def confusion_counts(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """The confusion matrix [true, predicted] as counts."""
    flat = np.bincount(labels.astype(np.int64) * num_classes + predicted, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def log_labelled_images(event_log: EventLog, images: np.ndarray, labels: np.ndarray,
                        class_names: tuple[str, ...]) -> None:
    """A grid of training images, each titled with its class, as the model receives them (raw pixels)."""
    if len(images):
        png = plots.image_grid(images, [class_names[label] for label in labels], columns=8)
        event_log.image("training examples", png, 0, "raw training images with their labels")
