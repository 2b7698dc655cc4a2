"""The input pipeline: shuffled, augmented batches of uint8 images, from memory or streamed from shards.

Two sources behind one shape of dataset, chosen by the split's size (`train.in_memory_mb`):
- small splits are held in memory and shuffled by permuting indices: a batch is one gather from the
  arrays, with no per-example work and no copy of the data in a shuffle buffer or a cache;
- larger ones are streamed from ingest's TFRecord shards: interleaved reads, a bounded shuffle
  buffer, parsing a batch at a time, prefetch. Memory stays flat whatever the split's size.

Pixels stay uint8 until the model's first layer casts them, so a batch moves a quarter of the bytes
float32 would. Each input pipeline (one per worker) yields one replica's batches, its own share of
the data, epoch after epoch, each epoch exactly `batches_per_epoch` long, so every worker takes the
same number of steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf


@dataclass(frozen=True)
class BatchPlan:
    """What one input pipeline produces: which epochs, how big its batches, and its share of the data."""

    num_classes: int  # width of the one-hot labels (the loss smooths them)
    batch_size: int  # examples per batch: one replica's share of the global batch
    batches_per_epoch: int  # the steps of an epoch times the replicas this pipeline feeds
    seed: int  # the run's seed
    epochs: int
    first_epoch: int = 0
    augment: str = "none"  # none | shift | shift+flip
    max_shift: float = 0.1  # largest shift as a share of the image size; at least one pixel
    pipeline: int = 0  # this pipeline's index (a worker's) ...
    num_pipelines: int = 1  # ... among this many: each reads its own part of the data


def training_batches(images: np.ndarray, labels: np.ndarray, plan: BatchPlan,
                     device: str | None = None) -> tf.data.Dataset:
    """Epochs of shuffled, augmented batches of (uint8 images, one-hot labels), gathered from arrays in memory.

    Epoch `e` is shuffled and augmented with seeds drawn from `(seed, e)` only, so a run resumed
    at epoch `e` sees the same batches as one that was never interrupted. Each pipeline takes every
    `num_pipelines`-th example of the epoch's order.

    Args:
        images, labels: the training split, [N, H, W, C] uint8 and [N] integer classes.
        plan: epochs, batch size, augmentation and this pipeline's share.
        device: where to prefetch batches to (a GPU), or None to keep them on the host.
    """
    images_tensor, labels_tensor = tf.constant(images), tf.constant(labels, tf.int32)
    run_seed = tf.constant(plan.seed, tf.int64)
    full_batches = len(labels) >= plan.batch_size * plan.num_pipelines  # see `steps_per_epoch`
    augmenter = _augmenter(plan, images.shape[1:3])

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        order = tf.random.experimental.stateless_shuffle(tf.range(len(labels)), seed=tf.stack([run_seed, epoch]))
        mine = order[plan.pipeline::plan.num_pipelines]
        return (tf.data.Dataset.from_tensor_slices(mine).batch(plan.batch_size, drop_remainder=full_batches)
                .repeat().take(plan.batches_per_epoch).enumerate()
                .map(lambda step, indices: augmenter(tf.gather(images_tensor, indices),
                                                     tf.gather(labels_tensor, indices), epoch, step)))

    batches = tf.data.Dataset.range(plan.first_epoch, plan.epochs).flat_map(epoch_batches)
    if device:
        return without_autotune(batches.apply(tf.data.experimental.prefetch_to_device(device)))
    return without_autotune(batches.prefetch(PREFETCH_BATCHES))


def streamed_training_batches(files: Sequence[Path], parse: Callable, image_shape: Sequence[int], plan: BatchPlan,
                              shuffle_examples: int) -> tf.data.Dataset:
    """Epochs of shuffled, augmented batches read from TFRecord shards, never holding the split in memory.

    Each epoch reads its shards in a seeded order, several at once (interleave), through a shuffle
    buffer of `shuffle_examples`; ingest wrote the split in random order, so a buffer smaller than
    the split still mixes the classes. Pipelines (workers) split the shards between them when there
    are enough, else every `num_pipelines`-th record. Seeds come from `(seed, epoch)` only, as in
    `training_batches`, so a resumed run reads the same batches.

    Args:
        files: the split's shards, in order.
        parse: maps a batch of serialized examples to (images, labels) (`components.shards.tf_reader.parse_examples`).
        image_shape: height, width, channels.
        plan: epochs, batch size, augmentation and this pipeline's share.
        shuffle_examples: records in the shuffle buffer.
    """
    names = tf.constant([str(path) for path in files])
    # Whole files only when they divide evenly: shards hold similar counts, pipelines equal shares.
    by_file = len(files) % plan.num_pipelines == 0
    num_files = len(files) // plan.num_pipelines if by_file else len(files)
    augmenter = _augmenter(plan, image_shape[:2])

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        _clear_a_zero_graph_seed()
        epoch_seed = plan.seed * 1_000_003 + epoch
        shards = tf.data.Dataset.from_tensor_slices(names)
        if by_file:
            shards = shards.shard(plan.num_pipelines, plan.pipeline)
        records = shards.shuffle(len(files), seed=epoch_seed).interleave(
            tf.data.TFRecordDataset, cycle_length=max(1, min(num_files, 4)), num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True)
        if not by_file:
            records = records.shard(plan.num_pipelines, plan.pipeline)
        return (records.shuffle(shuffle_examples, seed=epoch_seed).repeat()
                .batch(plan.batch_size, drop_remainder=True).take(plan.batches_per_epoch)
                .map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).enumerate()
                .map(lambda step, batch: augmenter(*batch, epoch, step), num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=True))

    return without_autotune(tf.data.Dataset.range(plan.first_epoch, plan.epochs).flat_map(epoch_batches)
                            .prefetch(PREFETCH_BATCHES))


PREFETCH_BATCHES = 2  # made ahead of the step; a batch takes ~2 ms to gather and augment against ~35 ms to train


def without_autotune(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with tf.data's autotuning off: fixed prefetch buffers, `AUTOTUNE` parallel calls one per core.

    An autotuned iterator has a tuning thread that sleeps for longer and longer periods, and deleting
    the iterator waited for it here, at random: the training iterator of `--preset fashion` held
    `train()` for 28 s after a 3-epoch run and about a minute after the 20-epoch one (the train
    stage's time outside its steady epochs went from 77 s to 21 s with autotuning off, the same
    weights). These pipelines have little to tune: a batch is one gather or one parse.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def _clear_a_zero_graph_seed() -> None:
    """Let a tensor-seeded `shuffle` be traced under a global seed of 0 (`train.seed=0` sets it).

    TensorFlow's `get_seed` compares the (graph, op) seeds with (0, 0) in Python, which raises for a
    tensor op seed when the graph's seed is 0 ("a symbolic tf.Tensor as a Python bool"). Cleared, the
    function's graph takes TensorFlow's default graph seed: still deterministic, seeded by the op seed;
    any other global seed is left as it is, so its shuffles are unchanged.
    """
    graph = tf.compat.v1.get_default_graph()
    if graph.seed is not None and graph.seed % (2**31 - 1) == 0:
        graph.seed = None


def _augmenter(plan: BatchPlan, image_size: Sequence[int]) -> Callable:
    """(pixels, labels, epoch, step) -> (augmented pixels, one-hot labels), seeded by (seed, epoch, step)."""
    shift = max(1, round(plan.max_shift * min(image_size)))
    run_seed = tf.constant(plan.seed, tf.int64)

    def augment(pixels: tf.Tensor, labels: tf.Tensor, epoch: tf.Tensor, step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # Each pipeline its own seeds (pipeline 0's are those of a run with one).
        batch_seed = tf.stack([run_seed + 1 + 7919 * plan.pipeline, epoch * 1_000_003 + step])
        if plan.augment != "none":
            pixels = shift_images(pixels, shift, batch_seed)
        if plan.augment == "shift+flip":
            pixels = flip_images(pixels, batch_seed + [0, 7])
        return pixels, tf.one_hot(labels, plan.num_classes)

    return augment


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch: the remainder (fewer than a batch) is left out, a different one each epoch.

    Every step then has the same batch shape, and an epoch is a whole number of steps, which
    `steps_per_execution` must divide for Keras to keep epochs aligned with the data.
    """
    return max(1, num_examples // batch_size)


def steps_per_execution(steps: int, most: int = 32) -> int:
    """The largest divisor of an epoch's `steps` up to `most`: steps run per call into TensorFlow.

    The training loop runs whole executions, so one that does not divide the epoch would run past its end.
    """
    return max(divisor for divisor in range(1, min(steps, most) + 1) if steps % divisor == 0)


def evaluation_batches(images: np.ndarray, labels: np.ndarray, num_classes: int,
                       batch_size: int) -> tf.data.Dataset:
    """Batches of (uint8 images, one-hot labels) in order, from arrays in memory."""
    return without_autotune(tf.data.Dataset.from_tensor_slices((images, tf.one_hot(labels, num_classes)))
                            .batch(batch_size).prefetch(PREFETCH_BATCHES))


def streamed_evaluation_batches(files: Sequence[Path], parse: Callable, num_classes: int,
                                batch_size: int) -> tf.data.Dataset:
    """Batches of (uint8 images, one-hot labels) in order, read from TFRecord shards."""
    return without_autotune(tf.data.TFRecordDataset([str(path) for path in files]).batch(batch_size)
                            .map(parse, num_parallel_calls=tf.data.AUTOTUNE)
                            .map(lambda images, labels: (images, tf.one_hot(labels, num_classes)))
                            .prefetch(PREFETCH_BATCHES))


def shift_images(images: tf.Tensor, max_shift: int, seed: tf.Tensor) -> tf.Tensor:
    """Move each image by its own random offset of up to `max_shift` pixels per axis, filling with 0.

    Two gathers on a zero-padded batch: whole pixels, no interpolation, on uint8.
    """
    height, width = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [max_shift, max_shift], [max_shift, max_shift], [0, 0]])
    offsets = tf.random.stateless_uniform([tf.shape(images)[0], 2], seed, 0, 2 * max_shift + 1, tf.int32)
    rows = offsets[:, :1] + tf.range(height)[tf.newaxis]
    columns = offsets[:, 1:] + tf.range(width)[tf.newaxis]
    return tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), columns, axis=2, batch_dims=1)


def flip_images(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Mirror a random half of the images left to right."""
    flip = tf.random.stateless_uniform([tf.shape(images)[0]], seed) < 0.5
    return tf.where(flip[:, tf.newaxis, tf.newaxis, tf.newaxis], tf.reverse(images, axis=[2]), images)
