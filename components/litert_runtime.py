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
MAX_CALL_IMAGES = 256  # images per interpreter call; larger calls are chunked (the same answers)


def litert_runner(tflite_path: Path, input_name: str, output_name: str, num_classes: int,
                  batch_hint: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """A function from float32 pixels [batch, height, width, channels] to probabilities, by LiteRT.

    Calls are serialized with a lock: an interpreter holds its tensors, so two threads may not run one
    at once. The batch dimension is resized to each call's (LiteRT's signature runner does it when the
    shape changes), and calls of more than `MAX_CALL_IMAGES` run in chunks of it: the interpreter keeps the
    memory of its largest call. Threads as for ONNX Runtime (`components.onnx_session`): one up to
    `SINGLE_THREAD_MAX_BATCH` images a call, else one per CPU this process may use (LiteRT's default is
    one: on 2 cores a second thread ran the Fashion model's batches of 256 1.9x faster, float and int8
    alike). The file is read into memory, not mapped: a file rewritten in place under a mapping would kill
    the process (SIGBUS) at its next call.
    """
    threads = 1 if batch_hint <= SINGLE_THREAD_MAX_BATCH else usable_cpus()
    interpreter = Interpreter(model_content=tflite_path.read_bytes(), num_threads=threads)
    signature = interpreter.get_signature_runner(SIGNATURE)
    lock = threading.Lock()

    def run(pixels: np.ndarray) -> np.ndarray:
        if not len(pixels):
            return np.zeros((0, num_classes), np.float32)
        with lock:
            return np.concatenate([signature(**{input_name: pixels[start:start + MAX_CALL_IMAGES]})[output_name]
                                   for start in range(0, len(pixels), MAX_CALL_IMAGES)])

    return run


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, on Linux); all of them where the OS cannot say (macOS)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
