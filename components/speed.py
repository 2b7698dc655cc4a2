"""How fast an exported file answers on this machine: one image at a time, and batches of 256.

Loads no TensorFlow; export times every file it publishes with it (`metadata.json`'s `files`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

SPEED_BATCH = 256  # images per call of the batch measurement
SINGLE_CALLS = 200  # one-image calls timed for the p50 and p99
BATCH_CALLS = 5  # batch calls timed for the throughput (their median)
WARM_UP_CALLS = 3  # untimed calls first: the first ones allocate


@dataclass(frozen=True)
class Speed:
    """Batch-1 latency percentiles and batch-256 throughput, measured on one machine."""

    batch_1_p50_ms: float
    batch_1_p99_ms: float
    batch_256_images_per_second: float


def measure_speed(single: Callable[[np.ndarray], Any], batched: Callable[[np.ndarray], Any],
                  images: np.ndarray) -> Speed:
    """Time `single` on one image at a time and `batched` on 256 images (`images` repeated if fewer).

    Args:
        single: a runner set up for one image a call (e.g. one thread).
        batched: a runner set up for large calls; may be the same function.
        images: float32 pixels [n, height, width, channels], n >= 1.
    """
    batch = np.resize(images, (SPEED_BATCH, *images.shape[1:])).astype(np.float32)
    one_image = [_seconds(single, batch[index % SPEED_BATCH][None]) for index in range(WARM_UP_CALLS + SINGLE_CALLS)]
    batches = [_seconds(batched, batch) for _ in range(WARM_UP_CALLS + BATCH_CALLS)]
    one_image_ms = np.array(one_image[WARM_UP_CALLS:]) * 1e3
    return Speed(batch_1_p50_ms=float(np.percentile(one_image_ms, 50)),
                 batch_1_p99_ms=float(np.percentile(one_image_ms, 99)),
                 batch_256_images_per_second=SPEED_BATCH / float(np.median(batches[WARM_UP_CALLS:])))


def _seconds(call: Callable[[np.ndarray], Any], pixels: np.ndarray) -> float:
    start = time.perf_counter()
    call(pixels)
    return time.perf_counter() - start
