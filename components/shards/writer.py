"""Writing the split files: `SplitWriter` writes each split's shards under temporary names, then publishes them.

Ingest loads no TensorFlow (3 s of every digits run): the records are built with protobuf
(`example.serialize_example`) and framed here as TensorFlow's TFRecord writer frames them (the length,
its masked CRC-32C, the record, its masked CRC-32C), with Google's C implementation of CRC-32C
(`google_crc32c`), so TensorFlow's reader, which checks both CRCs, reads them.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from components.atomic import write_json_atomically
from components.hashing import json_sha256
from components.shards.example import serialize_example
from components.shards.layout import BYTES_PER_MB, FORMAT, LAYOUT_FILE, image_nbytes, labels_path, shard_name
from components.shards.record_reader import iter_records


def plan_shards(num_examples: int, example_nbytes: int, shard_mb: float) -> list[int]:
    """Examples per shard: `max(1, ceil(split bytes / shard bytes))` shards, the examples spread evenly.

    Args:
        num_examples: the split's examples.
        example_nbytes: bytes of one image's pixels.
        shard_mb: target size of one shard (`data.shard_mb`), in MB.

    Returns:
        The number of examples in each shard, in order; the first ones take one more when it does not divide.
    """
    num_shards = max(1, math.ceil(num_examples * example_nbytes / (shard_mb * BYTES_PER_MB)))
    base, extra = divmod(num_examples, num_shards)
    return [base + (index < extra) for index in range(num_shards)]


class SplitWriter:
    """Writes splits into `splits_dir` under hidden temporary names; `publish` makes them visible.

    Nothing in the folder looks finished until `publish` renames the shards and labels into place
    and then writes `splits.json`; `discard` removes what an unfinished writer left.
    """

    def __init__(self, splits_dir: Path, image_shape: tuple[int, int, int], dtype: str,
                 class_names: tuple[str, ...], shard_mb: float):
        self.splits_dir = splits_dir
        self.image_shape = image_shape
        self.dtype = np.dtype(dtype).name
        self.class_names = class_names
        self.shard_mb = shard_mb
        self._written: dict[str, _WrittenSplit] = {}
        self._tmp_paths: list[Path] = []

    def write_split(self, split: str, chunks: Iterable[tuple[np.ndarray, np.ndarray]], num_examples: int) -> int:
        """Write one split from chunks of (images, labels), planned for `num_examples` examples.

        Fewer examples may come (bad files skipped): the split is then laid out again for the number
        that came, so the shard count and spread always follow `plan_shards`.

        Returns:
            The number of examples written.
        """
        example_nbytes = image_nbytes(self.image_shape, self.dtype)
        plan = plan_shards(num_examples, example_nbytes, self.shard_mb)
        paths = self._new_tmp_paths(split, "", len(plan))
        labels, pixel_digest = _write_records(paths, plan, chunks, self.image_shape, self.dtype)
        if len(labels) != num_examples:
            plan = plan_shards(len(labels), example_nbytes, self.shard_mb)
            paths = _copy_records(paths, plan, self._new_tmp_paths(split, "relaid.", len(plan)))
        labels_tmp = self._new_tmp_paths(split, "labels.", 1)[0]
        with labels_tmp.open("wb") as f:
            np.save(f, labels)
        self._written[split] = _WrittenSplit(paths, plan, labels_tmp, pixel_digest, _array_sha256(labels))
        return len(labels)

    def publish(self) -> str:
        """Rename every split's files into place, then write `splits.json`.

        Returns:
            sha256 over the class names and, per split, the image shape and dtype, the pixels and
            labels in order and the shard layout: it changes whenever what a reader sees changes.
        """
        layout: dict[str, Any] = {"format": FORMAT, "image_shape": list(self.image_shape), "dtype": self.dtype,
                                  "class_names": list(self.class_names), "splits": {}}
        content: dict[str, Any] = {"layout": layout, "content": {}}
        for split, written in self._written.items():
            names = [shard_name(split, index, len(written.plan)) for index in range(len(written.plan))]
            for tmp_path, name in zip(written.paths, names):
                os.replace(tmp_path, self.splits_dir / name)
            os.replace(written.labels_tmp, labels_path(self.splits_dir, split))
            layout["splits"][split] = {"num_examples": sum(written.plan), "shards": names,
                                       "shard_examples": written.plan}
            content["content"][split] = {"pixels": written.pixel_sha256, "labels": written.labels_sha256}
        write_json_atomically(self.splits_dir / LAYOUT_FILE, layout)
        return json_sha256(content)

    def discard(self) -> None:
        """Remove every temporary file this writer made."""
        for path in self._tmp_paths:
            path.unlink(missing_ok=True)

    def _new_tmp_paths(self, split: str, kind: str, count: int) -> list[Path]:
        paths = [self.splits_dir / f".{split}-{kind}{index:05d}.{os.getpid()}.tmp" for index in range(count)]
        self._tmp_paths += paths
        return paths


@dataclass(frozen=True)
class _WrittenSplit:
    """A split written under temporary names, waiting for `publish`."""

    paths: list[Path]
    plan: list[int]  # examples per shard
    labels_tmp: Path
    pixel_sha256: str
    labels_sha256: str


def _write_records(paths: list[Path], plan: list[int], chunks: Iterable[tuple[np.ndarray, np.ndarray]],
                   image_shape: tuple[int, int, int], dtype: str) -> tuple[np.ndarray, str]:
    """Serialize the chunks' examples into `paths`, `plan[i]` records in file i (fewer if fewer come).

    Returns:
        Every label written (int64, in order) and the sha256 of the pixels written.
    """
    pixel_digest, labels = hashlib.sha256(), []
    records = (serialize_example(image, label) for images, chunk_labels in
               _checked(chunks, image_shape, dtype, pixel_digest, labels) for image, label in zip(images, chunk_labels))
    for path, count in zip(paths, plan):
        with path.open("wb") as f:
            for _, record in zip(range(count), records):
                f.write(_frame(record))
    if next(records, None) is not None:
        raise RuntimeError(f"more examples came than the {sum(plan)} planned")
    return (np.concatenate(labels) if labels else np.zeros((0,), np.int64)), pixel_digest.hexdigest()


def _checked(chunks: Iterable[tuple[np.ndarray, np.ndarray]], image_shape: tuple[int, int, int], dtype: str,
             pixel_digest: Any, labels: list[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The chunks as little-endian C-order arrays of the split's shape and dtype, digested and labels kept."""
    for images, chunk_labels in chunks:
        if images.shape[1:] != tuple(image_shape) or images.dtype != np.dtype(dtype):
            raise RuntimeError(f"a chunk of {images.dtype} {images.shape[1:]} images in a split of {dtype} "
                               f"{tuple(image_shape)}")
        images = np.ascontiguousarray(images, dtype=np.dtype(dtype).newbyteorder("<"))
        chunk_labels = np.asarray(chunk_labels, dtype=np.int64)
        pixel_digest.update(images.data)
        labels.append(chunk_labels)
        yield images, chunk_labels


def _frame(record: bytes) -> bytes:
    """One TFRecord frame, as TensorFlow's writer makes it: the length, its masked CRC-32C, the record, its
    masked CRC-32C."""
    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", _masked_crc32c(length)) + record + struct.pack("<I", _masked_crc32c(record))


def _masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C (Castagnoli), with Google's C implementation."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _copy_records(old_paths: list[Path], plan: list[int], new_paths: list[Path]) -> list[Path]:
    """Lay the records of `old_paths` out again as `plan` says, copying each frame verbatim; returns `new_paths`."""
    frames = (frame for path in old_paths for frame in iter_records(path))
    for path, count in zip(new_paths, plan):
        with path.open("wb") as f:
            for _, frame in zip(range(count), frames):
                f.write(frame)
    for path in old_paths:
        path.unlink()
    return new_paths


def _array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()
