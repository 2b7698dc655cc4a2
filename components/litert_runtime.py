"""Running an exported `model.tflite` (or `model_int8.tflite`) with LiteRT, the runtime phones use.

`ai-edge-litert` is LiteRT's own Python package (TensorFlow's `tf.lite.Interpreter` is deprecated in its
favour): it loads no TensorFlow, so predict and a server need none for these files either.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from components.onnx_session import SINGLE_THREAD_MAX_BATCH

SIGNATURE = "serving_default"  # the SavedModel signature the file was converted from: pixels -> probabilities


def litert_runner(tflite_path: Path, input_name: str, output_name: str, num_classes: int,
                  batch_hint: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """A function from float32 pixels [batch, height, width, channels] to probabilities, by LiteRT.

    Calls are serialized with a lock: an interpreter holds its tensors, so two threads may not run one
    at once. The batch dimension is resized to each call's (LiteRT's signature runner does it when the
    shape changes). Threads as for ONNX Runtime (`components.onnx_session`): one up to
    `SINGLE_THREAD_MAX_BATCH` images a call, else one per core (LiteRT's default is one: on 2 cores a second
    thread ran the Fashion model's batches of 256 1.9x faster, float and int8 alike).
    """
    threads = 1 if batch_hint <= SINGLE_THREAD_MAX_BATCH else os.cpu_count() or 1
    signature = Interpreter(model_path=str(tflite_path), num_threads=threads).get_signature_runner(SIGNATURE)
    lock = threading.Lock()

    def run(pixels: np.ndarray) -> np.ndarray:
        if not len(pixels):
            return np.zeros((0, num_classes), np.float32)
        with lock:
            return signature(**{input_name: pixels})[output_name].copy()

    return run
