"""The SavedModel backend of `components.loaded_model`: TensorFlow runs the exported `serving_default`.

Kept apart so that the ONNX path never imports TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf


def saved_model_runner(version_dir: Path, input_name: str, output_name: str,
                       num_classes: int) -> Callable[[np.ndarray], np.ndarray]:
    """A function from float32 pixels [batch, height, width, channels] to probabilities, by TensorFlow."""
    serving = tf.saved_model.load(str(version_dir)).signatures["serving_default"]

    def run(pixels: np.ndarray) -> np.ndarray:
        if not len(pixels):
            return np.zeros((0, num_classes), np.float32)
        return serving(**{input_name: tf.constant(pixels)})[output_name].numpy()

    return run
