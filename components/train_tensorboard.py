"""What training shows besides Keras's scalars: the learning rate per epoch, labelled training images
and a confusion matrix on the validation split after every epoch (TensorBoard's Images tab).
"""

from __future__ import annotations

from typing import Callable

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
    """After every epoch, the validation split's confusion matrix as an image in TensorBoard."""

    def __init__(self, event_log: EventLog, matrix: Callable[[], np.ndarray], class_names: tuple[str, ...]):
        """`matrix()` gives the last validation pass's confusion counts (rows: true class)."""
        super().__init__()
        self.event_log, self.matrix, self.class_names = event_log, matrix, class_names

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        matrix = self.matrix()
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
