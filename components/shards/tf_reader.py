"""Reading the split files with TensorFlow: a `tf.data` parser, NumPy chunks, a split in memory.

TensorFlow's TFRecord reader checks every record's CRCs, so a corrupt shard is found here. TensorFlow
is imported inside the functions that need it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np

from components.artifacts import Splits
from components.errors import UserError, first_line
from components.shards.layout import LAYOUT_FILE, examples_per_chunk, image_nbytes, split_files


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
        chunk_examples: examples per chunk (the last one may hold fewer); None = a chunk of
            `layout.CHUNK_BYTES`.

    Yields:
        (images [b, H, W, C] in the split's dtype, labels [b] int64).

    Raises:
        UserError: a record does not hold an image of the shape and dtype `splits.json` declares, or
            a shard is corrupt.
    """
    yield from _chunks(splits, split, chunk_examples or _chunk_examples(splits), limit=None)


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
    for chunk_images, chunk_labels in _chunks(splits, split, min(_chunk_examples(splits), max(1, count)),
                                              limit=count):
        images[start: start + len(chunk_labels)] = chunk_images
        labels[start: start + len(chunk_labels)] = chunk_labels
        start += len(chunk_labels)
    return images[:start], labels[:start]


def _chunk_examples(splits: Splits) -> int:
    return examples_per_chunk(image_nbytes(splits.image_shape, splits.dtype))


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
