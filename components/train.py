"""Train: fit the CNN on the training split with tf.data, seeded, logging to TensorBoard."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from components.artifacts import Normalization, Schema, Splits, TrainedModel, load_split
from components.devices import choose_precision, local_devices
from components.model import build_model
from pipeline.config import ModelConfig, TrainConfig

log = logging.getLogger(__name__)


def train(config: TrainConfig, model_config: ModelConfig, splits: Splits, schema: Schema,
          normalization: Normalization, out_dir: Path, tensorboard_dir: Path) -> TrainedModel:
    """Train the model and save it as `model.keras` with its per-epoch `history.json`.

    Args:
        config: the `train` section (epochs, batch size, precision, seed, profiler range).
        model_config: the `model` section.
        splits: ingest's output; `train` is fitted, `val` is monitored.
        schema: validate's output; the model's input shape and width come from it.
        normalization: preprocess's output, baked into the model's first layer.
        out_dir: folder for the model and its history; created.
        tensorboard_dir: where TensorBoard's scalars, images and profiler trace go.

    Returns:
        The saved model's path, the precision policy it trained in, and its history's path.
    """
    precision = choose_precision(config.precision, local_devices())
    _seed_everything(config.seed, config.deterministic)
    train_images, train_labels = load_split(splits, "train")
    val_images, val_labels = load_split(splits, "val")
    keras.mixed_precision.set_global_policy(precision)
    try:
        model = build_model(model_config, schema.image_shape, schema.num_classes,
                            normalization.mean, normalization.std)
        steps_per_epoch = -(-len(train_labels) // config.batch_size)
        model.compile(optimizer=_optimizer(config, steps_per_epoch),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        log_images(tensorboard_dir, train_images[: config.log_images])
        history = model.fit(
            make_dataset(train_images, train_labels, config.batch_size, shuffle_seed=config.seed),
            validation_data=make_dataset(val_images, val_labels, config.batch_size),
            epochs=config.epochs, callbacks=[_tensorboard(config, tensorboard_dir, steps_per_epoch)],
            shuffle=False, verbose=2,  # the dataset shuffles itself, seeded
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / "model.keras")
    history_path = out_dir / "history.json"
    history_path.write_text(json.dumps({k: [float(v) for v in vs] for k, vs in history.history.items()}, indent=2))
    log.info("train: %d epochs in %s, val_accuracy %.4f", config.epochs, precision,
             history.history["val_accuracy"][-1])
    return TrainedModel(out_dir / "model.keras", precision, history_path)


def make_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int,
                 shuffle_seed: int | None = None) -> tf.data.Dataset:
    """Batches of (float32 pixels, labels): cached, shuffled with a seed when given, prefetched."""
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(labels), seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    return dataset.prefetch(tf.data.AUTOTUNE)


def log_images(tensorboard_dir: Path, images: np.ndarray) -> None:
    """Write a few raw training images to TensorBoard's Images tab."""
    if not len(images):
        return
    with tf.summary.create_file_writer(str(tensorboard_dir / "images")).as_default():
        scaled = tf.cast(images, tf.float32) / max(float(images.max()), 1.0)
        tf.summary.image("train examples", scaled, step=0, max_outputs=len(images))


def _seed_everything(seed: int, deterministic: bool) -> None:
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def _optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, config.epochs * steps_per_epoch)
    return keras.optimizers.Adam(schedule)


def _tensorboard(config: TrainConfig, tensorboard_dir: Path, steps_per_epoch: int) -> keras.callbacks.TensorBoard:
    profile_batch: int | tuple[int, int] = 0
    if config.profile_batches:
        first, last = config.profile_batches[0], config.profile_batches[-1]
        last = min(last, config.epochs * steps_per_epoch)
        profile_batch = (first, last) if first <= last else 0
    return keras.callbacks.TensorBoard(log_dir=str(tensorboard_dir), profile_batch=profile_batch)
