"""Preprocess: normalization statistics from the training split only.

The statistics are not applied to the data here: the model's first layer applies them, so the
exported model takes raw pixels and training and serving cannot drift apart.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from components.artifacts import Normalization, Splits
from components.config import PreprocessConfig
from components.shards.tf_reader import image_chunks


def preprocess(config: PreprocessConfig, splits: Splits, out_dir: Path) -> Normalization:
    """Compute the training split's pixel mean and std and write `normalization.json`.

    Args:
        config: the `preprocess` section.
        splits: ingest's output; only `train` is read.
        out_dir: folder for `normalization.json`; created.

    Returns:
        The statistics the model's Rescaling layer bakes in: x -> (x - mean) / std.
    """
    mean, std = pixel_mean_and_std(splits)
    std += config.epsilon
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "normalization.json"
    path.write_text(json.dumps({"mean": mean, "std": std, "computed_on": "train"}, indent=2))
    return Normalization(path, mean, std)


def pixel_mean_and_std(splits: Splits) -> tuple[float, float]:
    """Mean and standard deviation of every pixel value of the training split, in one streaming pass.

    Each chunk is summed in int64 and the sums are added as Python integers, so nothing is rounded
    before the last division: no float copy of the split is made, and the variance is free of the
    cancellation that E[x^2] - E[x]^2 suffers in floating point.

    Args:
        splits: ingest's output, of integer pixels (validate has checked they are uint8).

    Returns:
        (mean, std): what NumPy's `mean()` and `std()` of the whole split give, to about 1e-15.
    """
    total = total_sq = count = 0
    for images, _ in image_chunks(splits, "train"):
        values = images.astype(np.int64)  # one chunk at a time; exact, unlike float sums of big splits
        total += int(values.sum())
        total_sq += int(np.square(values).sum())
        count += values.size
    count = max(count, 1)
    variance = (count * total_sq - total * total) / count**2  # exact integers until this division
    return total / count, math.sqrt(max(variance, 0.0))
