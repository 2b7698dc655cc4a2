"""The split files ingest writes and every later stage reads: sharded TFRecord files, read in streaming passes.

In `Splits.splits_dir`:

- `<split>-<i:05d>-of-<n:05d>.tfrecord` (split: train, val, test): uncompressed TFRecord files. Each
  record is a serialized `tf.train.Example` with `image` (bytes: the raw C-order H x W x C pixels in
  the split's dtype, little-endian) and `label` (int64: the class index). A shard holds about
  `data.shard_mb` MB of pixels, `n = max(1, ceil(split bytes / shard bytes))`, the examples spread
  evenly over the shards in order. Train is stored in a seeded random order, so a bounded shuffle
  buffer over interleaved shards still mixes the classes; a source's own test split keeps its order.
- `<split>-labels.npy`: the split's int64 labels in record order, so counts and labels need no pass
  over the images.
- `splits.json`, written last (its presence means the rest is complete): the format, image shape,
  dtype, class names and, per split, the number of examples, the shard files and the examples in each.

Stages read a split chunk by chunk (`image_chunks`), or build their own `tf.data` pipeline from
`split_files` and `parse_examples`; memory is bounded by a chunk, not by the data. `read_images_at`
reads a few examples without TensorFlow (the report stage loads none). TensorFlow is imported
inside the functions that need it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Sequence

import numpy as np

from components.artifacts import Splits, json_sha256
from components.atomic import write_json_atomically
from components.errors import UserError, first_line

FORMAT = "tfrecord of tf.train.Example (image: raw bytes, label: int64)"
LAYOUT_FILE = "splits.json"
BYTES_PER_MB = 10**6
CHUNK_BYTES = 16 * BYTES_PER_MB  # pixels per chunk of a streaming pass: 16 MB, whatever the image size


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


def split_nbytes(splits: Splits, split: str) -> int:
    """Bytes of the split's pixels in memory: N * H * W * C * itemsize.

    Args:
        splits: ingest's output.
        split: train, val or test.

    Returns:
        What `load_split` of the whole split would hold in its image array.
    """
    return splits.num_examples[split] * math.prod(splits.image_shape) * np.dtype(splits.dtype).itemsize


def parse_examples(image_shape: Sequence[int], dtype: str) -> Callable[[Any], tuple[Any, Any]]:
    """A function from a batch of serialized examples to (images, labels), for use in tf.data after `.batch`.

    Args:
        image_shape: (height, width, channels) of every image.
        dtype: the pixels' NumPy dtype name, e.g. "uint8".

    Returns:
        `parse(serialized)`: a 1-D string tensor [b] to images [b, H, W, C] of `dtype` and labels [b]
        int32. An image of another byte size fails the batch (InvalidArgumentError), whatever b is.
    """
    import tensorflow as tf

    features = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    pixel_type = tf.as_dtype(np.dtype(dtype))
    shape = [int(n) for n in image_shape]

    def parse(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        parsed = tf.io.parse_example(serialized, features)
        pixels = tf.io.decode_raw(parsed["image"], pixel_type, little_endian=True)
        # The batch size spelled out, not -1: a wrong image size then fails instead of reshaping silently.
        images = tf.reshape(pixels, tf.concat([tf.shape(parsed["label"])[:1], shape], axis=0))
        return tf.ensure_shape(images, [None, *shape]), tf.cast(parsed["label"], tf.int32)

    return parse


def image_chunks(splits: Splits, split: str, chunk_examples: int | None = None
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The split in stored order, as NumPy chunks: memory is bounded by one chunk.

    Args:
        splits: ingest's output.
        split: train, val or test.
        chunk_examples: examples per chunk (the last one may hold fewer); None = `chunk_size(splits)`.

    Yields:
        (images [b, H, W, C] in the split's dtype, labels [b] int64).

    Raises:
        UserError: a record does not hold an image of the shape and dtype `splits.json` declares, or
            a shard is corrupt.
    """
    yield from _chunks(splits, split, chunk_examples or chunk_size(splits), limit=None)


def chunk_size(splits: Splits) -> int:
    """Examples in a chunk of CHUNK_BYTES: 20,408 Fashion-MNIST images, 106 photos of 224x224x3."""
    return max(1, CHUNK_BYTES // (int(np.prod(splits.image_shape)) * np.dtype(splits.dtype).itemsize))


def load_split(splits: Splits, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The whole split, or its first `limit` examples, in memory.

    Args:
        splits: ingest's output.
        split: train, val or test.
        limit: read only this many examples from the start; None = all.

    Returns:
        images [N, H, W, C] in the split's dtype and labels [N] int64, in stored order.
    """
    count = splits.num_examples[split] if limit is None else min(limit, splits.num_examples[split])
    images = np.empty((count, *splits.image_shape), dtype=splits.dtype)
    labels = np.empty((count,), dtype=np.int64)
    start = 0
    for chunk_images, chunk_labels in _chunks(splits, split, min(chunk_size(splits), max(1, count)), limit=count):
        images[start: start + len(chunk_labels)] = chunk_images
        labels[start: start + len(chunk_labels)] = chunk_labels
        start += len(chunk_labels)
    return images[:start], labels[:start]


def _chunks(splits: Splits, split: str, chunk_examples: int, limit: int | None
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    import tensorflow as tf

    files = [str(path) for path in split_files(splits, split)]
    dataset = tf.data.TFRecordDataset(files)
    if limit is not None:
        dataset = dataset.take(limit)
    dataset = dataset.batch(chunk_examples).map(parse_examples(splits.image_shape, splits.dtype)).prefetch(1)
    try:
        for images, labels in dataset.as_numpy_iterator():
            yield images, labels.astype(np.int64)
    except tf.errors.InvalidArgumentError as error:
        shape = "x".join(str(n) for n in splits.image_shape)
        raise UserError(f"splits disagree on image shape or dtype: a record of the {split} split in "
                        f"{splits.splits_dir} holds no {shape} {splits.dtype} image as {LAYOUT_FILE} declares "
                        f"({first_line(error)}); every image must have the same size, channels and "
                        "type: run ingest again") from None
    except tf.errors.DataLossError as error:
        raise UserError(f"a shard of the {split} split in {splits.splits_dir} is corrupt "
                        f"({first_line(error)}); run ingest again") from None


def read_images_at(splits: Splits, split: str, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """A few examples' images by position in the split, without TensorFlow.

    The TFRecord framing (8-byte little-endian length, 4-byte masked CRC of the length, the data,
    4-byte masked CRC of the data) is read here, skipping unwanted records by seeking; the CRCs are
    not checked, since that needs CRC-32C, which the standard library lacks, and the shards were
    read whole, checked by TensorFlow, by validate. `shard_examples` in `splits.json` says which
    shard holds a position.

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
            found[row] = _parse_image(record, splits.image_shape, splits.dtype)
    return found[inverse.reshape(-1)]


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


def iter_records(path: Path) -> Iterator[bytes]:
    """Every record of a TFRecord file as its whole frame (length, CRCs and data), to copy verbatim."""
    with path.open("rb") as f:
        while header := f.read(8):
            length = int.from_bytes(header, "little")
            yield header + f.read(4 + length + 4)


def _record_length(f: BinaryIO, path: Path) -> int:
    header = f.read(8)
    if len(header) < 8:
        raise ValueError(f"{path}: ends before the record asked for; splits.json and the shard disagree")
    return int.from_bytes(header, "little")


def _parse_image(record: bytes, image_shape: Sequence[int], dtype: str) -> np.ndarray:
    example = _example_class()()
    example.ParseFromString(record)
    data = example.features.feature["image"].bytes_list.value[0]
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(image_shape)


# tf.train.Example's messages (tensorflow/core/example/{example,feature}.proto), with the same field
# numbers; TensorBoard ships no example_pb2, and TensorFlow's would load TensorFlow. Only the kinds
# of feature this format uses are declared (others parse as unknown fields).
_EXAMPLE_PROTO = """
name: "keras_pipeline/example.proto" package: "keras_pipeline" syntax: "proto3"
message_type { name: "BytesList" field { name: "value" number: 1 label: LABEL_REPEATED type: TYPE_BYTES } }
message_type { name: "Int64List" field { name: "value" number: 1 label: LABEL_REPEATED type: TYPE_INT64 } }
message_type {
  name: "Feature"
  field { name: "bytes_list" number: 1 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".keras_pipeline.BytesList" }
  field { name: "int64_list" number: 3 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".keras_pipeline.Int64List" }
}
message_type {
  name: "Features"
  field { name: "feature" number: 1 label: LABEL_REPEATED type: TYPE_MESSAGE
          type_name: ".keras_pipeline.Features.FeatureEntry" }
  nested_type {
    name: "FeatureEntry" options { map_entry: true }
    field { name: "key" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
    field { name: "value" number: 2 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".keras_pipeline.Feature" }
  }
}
message_type {
  name: "Example"
  field { name: "features" number: 1 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".keras_pipeline.Features" }
}
"""


@functools.cache
def _example_class() -> type:
    """The Example message class, in a pool of its own (TensorFlow's pool may hold its own Example)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

    pool = descriptor_pool.DescriptorPool()
    pool.Add(text_format.Parse(_EXAMPLE_PROTO, descriptor_pb2.FileDescriptorProto()))
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("keras_pipeline.Example"))


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
        example_nbytes = math.prod(self.image_shape) * np.dtype(self.dtype).itemsize
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
    records = (_example(image, label) for images, chunk_labels in
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


def _example(image: np.ndarray, label: int) -> bytes:
    """One serialized tf.train.Example of the format (built with protobuf: ingest loads no TensorFlow)."""
    example = _example_class()()
    features = example.features.feature
    features["image"].bytes_list.value.append(image.tobytes())
    features["label"].int64_list.value.append(int(label))
    return example.SerializeToString()


def _frame(record: bytes) -> bytes:
    """One TFRecord frame, as TensorFlow's writer makes it: the length, its masked CRC-32C, the record, its
    masked CRC-32C. Written here so that ingest need not import TensorFlow (3 s of every digits run)."""
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
