"""Preprocess: normalization statistics from the training split only.

The statistics are not applied to the data here: the model's first layer applies them, so the
exported model takes raw pixels and training and serving cannot drift apart.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from components.artifacts import Normalization, Splits, load_split
from components.config import PreprocessConfig


def preprocess(config: PreprocessConfig, splits: Splits, out_dir: Path) -> Normalization:
    """Compute the training split's pixel mean and std and write `normalization.json`.

    Args:
        config: the `preprocess` section.
        splits: ingest's output; only `train` is read.
        out_dir: folder for `normalization.json`; created.

    Returns:
        The statistics the model's Rescaling layer bakes in: x -> (x - mean) / std.
    """
    images, _ = load_split(splits, "train")
    pixels = images.astype(np.float64)
    mean, std = float(pixels.mean()), float(pixels.std()) + config.epsilon
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "normalization.json"
    path.write_text(json.dumps({"mean": mean, "std": std, "computed_on": "train"}, indent=2))
    return Normalization(path, mean, std)
