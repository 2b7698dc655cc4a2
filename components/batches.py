"""The input pipeline: batches of uint8 images gathered from arrays in memory, shuffled and augmented.

Pixels stay uint8 until the model's first layer casts them, so a batch moves a quarter of the bytes
float32 would. Shuffling permutes indices, not images: a batch is one gather from the arrays, with
no per-example work and no copy of the data in a shuffle buffer or a cache.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def training_batches(images: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int, seed: int,
                     epochs: int, first_epoch: int = 0, augment: str = "none",
                     max_shift: float = 0.1, device: str | None = None) -> tf.data.Dataset:
    """Epochs `first_epoch..epochs-1` of shuffled, augmented full batches of (uint8 images, one-hot labels).

    Epoch `e` is shuffled and augmented with seeds drawn from `(seed, e)` only, so a run resumed
    at epoch `e` sees the same batches as one that was never interrupted.

    Args:
        images, labels: the training split, [N, H, W, C] uint8 and [N] integer classes.
        num_classes: width of the one-hot labels (the loss smooths them).
        batch_size: examples per batch (the global batch under a distribution strategy).
        seed: the run's seed.
        epochs, first_epoch: which epochs to produce.
        augment: none | shift | shift+flip.
        max_shift: largest shift as a share of the image size; at least one pixel.
        device: where to prefetch batches to (a GPU), or None to keep them on the host.
    """
    images_tensor, labels_tensor = tf.constant(images), tf.constant(labels, tf.int32)
    run_seed = tf.constant(seed, tf.int64)
    full_batches = len(labels) >= batch_size  # see `steps_per_epoch`
    shift = max(1, round(max_shift * min(images.shape[1:3])))

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        order = tf.random.experimental.stateless_shuffle(tf.range(len(labels)), seed=tf.stack([run_seed, epoch]))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=full_batches).enumerate().map(
            lambda step, indices: batch(indices, tf.stack([run_seed + 1, epoch * 1_000_003 + step])))

    def batch(indices: tf.Tensor, batch_seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        pixels = tf.gather(images_tensor, indices)
        if augment != "none":
            pixels = shift_images(pixels, shift, batch_seed)
        if augment == "shift+flip":
            pixels = flip_images(pixels, batch_seed + [0, 7])
        return pixels, tf.one_hot(tf.gather(labels_tensor, indices), num_classes)

    batches = tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch_batches)
    if device:
        return batches.apply(tf.data.experimental.prefetch_to_device(device))
    return batches.prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch: the remainder (fewer than a batch) is left out, a different one each epoch.

    Every step then has the same batch shape, and an epoch is a whole number of steps, which
    `steps_per_execution` must divide for Keras to keep epochs aligned with the data.
    """
    return max(1, num_examples // batch_size)


def steps_per_execution(steps: int, replicas: int = 1, most: int = 32) -> int:
    """The largest divisor of an epoch's `steps` up to `most`: steps run per call into TensorFlow.

    Keras runs whole executions, so one that does not divide the epoch would run past its end.
    With several replicas, 1: Keras 3.15's multi-step function fails under MirroredStrategy
    ("You must feed a value for placeholder tensor", seen with two logical CPUs).
    """
    if replicas > 1:
        return 1
    return max(divisor for divisor in range(1, min(steps, most) + 1) if steps % divisor == 0)


def evaluation_batches(images: np.ndarray, labels: np.ndarray, num_classes: int,
                       batch_size: int) -> tf.data.Dataset:
    """Batches of (uint8 images, one-hot labels) in order, for validation."""
    return (tf.data.Dataset.from_tensor_slices((images, tf.one_hot(labels, num_classes)))
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))


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
