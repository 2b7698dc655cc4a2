"""Names and sizes of the split files: shard and labels file names, `splits.json`, bytes, the streaming chunk."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from components.artifacts import Splits

FORMAT = "tfrecord of tf.train.Example (image: raw bytes, label: int64)"
LAYOUT_FILE = "splits.json"
BYTES_PER_MB = 10**6
# Pixels one chunk of a streaming pass over a split holds in memory, whether ingest writes it or a
# stage reads it: 16 MB, whatever the image size.
CHUNK_BYTES = 16 * BYTES_PER_MB


def shard_name(split: str, index: int, num_shards: int) -> str:
    """The file name of one shard of a split."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def labels_path(splits_dir: Path, split: str) -> Path:
    """Where a split's labels are kept, in record order."""
    return splits_dir / f"{split}-labels.npy"


def read_layout(splits_dir: Path) -> dict[str, Any]:
    """`splits.json` of a splits folder."""
    return json.loads((splits_dir / LAYOUT_FILE).read_text())


def split_files(splits: Splits, split: str) -> list[Path]:
    """The split's shard files, in record order.

    Args:
        splits: ingest's output.
        split: train, val or test.

    Returns:
        Paths of the `.tfrecord` files; reading them in this order gives the split's stored order.
    """
    return [splits.splits_dir / name for name in read_layout(splits.splits_dir)["splits"][split]["shards"]]


def split_labels(splits: Splits, split: str) -> np.ndarray:
    """The split's labels (int64), in record order, from `<split>-labels.npy`.

    Args:
        splits: ingest's output.
        split: train, val or test.

    Returns:
        int64 labels [N].
    """
    return np.load(labels_path(splits.splits_dir, split), allow_pickle=False)


def image_nbytes(image_shape: Sequence[int], dtype: str) -> int:
    """Bytes of one image's pixels: H * W * C * itemsize."""
    return math.prod(image_shape) * np.dtype(dtype).itemsize


def split_nbytes(splits: Splits, split: str) -> int:
    """Bytes of the split's pixels in memory: N * H * W * C * itemsize.

    Args:
        splits: ingest's output.
        split: train, val or test.

    Returns:
        What `tf_reader.load_split` of the whole split would hold in its image array.
    """
    return splits.num_examples[split] * image_nbytes(splits.image_shape, splits.dtype)


def examples_per_chunk(example_nbytes: int) -> int:
    """Examples in a chunk of CHUNK_BYTES: 20,408 Fashion-MNIST images, 106 photos of 224x224x3; at least 1."""
    return max(1, CHUNK_BYTES // max(1, example_nbytes))
