"""Reading the split files without TensorFlow: a few images by position, or every record of a file.

The report stage and `python -m pipeline.runs images` read images with it and load no TensorFlow;
the writer copies records with `iter_records` when it lays a split out again. The TFRecord framing
(8-byte little-endian length, 4-byte masked CRC-32C of the length, the data, 4-byte masked CRC-32C of
the data) is read here, skipping unwanted records by seeking. The CRCs are not checked: in a run,
validate has read every shard whole through `tf_reader`, whose TensorFlow reader checks them, and
these readers take a few records, or copy frames verbatim, CRCs and all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import numpy as np

from components.artifacts import Splits
from components.shards.example import parse_image
from components.shards.layout import read_layout


def read_images_at(splits: Splits, split: str, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """A few examples' images by position in the split, without TensorFlow.

    `shard_examples` in `splits.json` says which shard holds a position; the records before it in the
    shard are skipped by seeking.

    Args:
        splits: ingest's output.
        split: train, val or test.
        indices: positions in the split's stored order; repeats and any order are fine.

    Returns:
        images [len(indices), H, W, C] in the split's dtype, in the order of `indices`.

    Raises:
        IndexError: a position outside the split.
    """
    positions = np.asarray(indices, dtype=np.int64).reshape(-1)
    layout = read_layout(splits.splits_dir)["splits"][split]
    if positions.size and (positions.min() < 0 or positions.max() >= layout["num_examples"]):
        raise IndexError(f"positions {positions.min()}..{positions.max()} outside the {split} split "
                         f"(0..{layout['num_examples'] - 1})")
    wanted, inverse = np.unique(positions, return_inverse=True)
    starts = np.cumsum([0, *layout["shard_examples"]])
    shards = np.searchsorted(starts, wanted, side="right") - 1
    found = np.empty((len(wanted), *splits.image_shape), dtype=splits.dtype)
    for shard in np.unique(shards):
        in_shard = np.flatnonzero(shards == shard)
        path = splits.splits_dir / layout["shards"][shard]
        records = _records_at(path, (wanted[in_shard] - starts[shard]).tolist())
        for row, record in zip(in_shard, records):
            found[row] = parse_image(record, splits.image_shape, splits.dtype)
    return found[inverse.reshape(-1)]


def iter_records(path: Path) -> Iterator[bytes]:
    """Every record of a TFRecord file as its whole frame (length, CRCs and data), to copy verbatim."""
    with path.open("rb") as f:
        while header := f.read(8):
            length = int.from_bytes(header, "little")
            yield header + f.read(4 + length + 4)


def _records_at(path: Path, offsets: list[int]) -> Iterator[bytes]:
    """The data of the records at `offsets` (ascending, distinct) of one TFRecord file."""
    with path.open("rb") as f:
        position = 0
        for offset in offsets:
            while position < offset:
                length = _record_length(f, path)
                f.seek(4 + length + 4, os.SEEK_CUR)  # length CRC, data, data CRC
                position += 1
            length = _record_length(f, path)
            f.seek(4, os.SEEK_CUR)
            yield f.read(length)
            f.seek(4, os.SEEK_CUR)
            position += 1


def _record_length(f: BinaryIO, path: Path) -> int:
    header = f.read(8)
    if len(header) < 8:
        raise ValueError(f"{path}: ends before the record asked for; splits.json and the shard disagree")
    return int.from_bytes(header, "little")
