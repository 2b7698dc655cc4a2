"""Train: fit the CNN on the training split with tf.data, seeded, logging to TensorBoard."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from components.artifacts import Normalization, Schema, Splits, TrainedModel, fingerprint_arrays, load_split
from components.atomic import write_atomically
from components.config import ModelConfig, TrainConfig
from components.devices import TrainingPlan, make_strategy
from components.model import build_model

log = logging.getLogger(__name__)


def train(config: TrainConfig, model_config: ModelConfig, splits: Splits, schema: Schema,
          normalization: Normalization, plan: TrainingPlan, out_dir: Path, tensorboard_dir: Path,
          resume_dir: Path | None = None) -> TrainedModel:
    """Train the model and save it as `model.keras` with its per-epoch `history.json`.

    Args:
        config: the `train` section (epochs, batch size, learning rate, seed, profiler range).
        model_config: the `model` section.
        splits: ingest's output; `train` is fitted, `val` is monitored.
        schema: validate's output; the model's input shape and width come from it.
        normalization: preprocess's output, baked into the model's first layer.
        plan: the precision policy and strategy `train.precision` and `train.strategy` resolved to.
        out_dir: folder for the model and its history; created.
        tensorboard_dir: where TensorBoard's scalars, images and profiler trace go.
        resume_dir: where the state after each finished epoch is kept; a later call with the same
            folder resumes from it and ends with the same weights as an uninterrupted run.

    Returns:
        The saved model's path and weights hash, the precision policy it trained in, its history.
    """
    strategy = make_strategy(plan.strategy)
    _seed_everything(config.seed, config.deterministic)
    train_images, train_labels = load_split(splits, "train")
    steps_per_epoch = -(-len(train_labels) // config.batch_size)
    checkpoint = EpochCheckpoint(resume_dir) if resume_dir else None
    keras.mixed_precision.set_global_policy(plan.precision)
    try:
        with strategy.scope():
            model = build_model(model_config, schema.image_shape, schema.num_classes,
                                normalization.mean, normalization.std)
            model.compile(optimizer=_optimizer(config, steps_per_epoch),
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"])
            first_epoch, history = checkpoint.restore(model) if checkpoint else (0, {})
        if first_epoch == 0:
            log_images(tensorboard_dir, train_images[: config.log_images])
        if first_epoch < config.epochs:  # killed after its last epoch: nothing left to train
            fitted = _fit(model, config, splits, (train_images, train_labels), first_epoch, steps_per_epoch,
                          tensorboard_dir, [checkpoint] if checkpoint else [])
            for key, values in fitted.items():
                history[key] = history.get(key, []) + [float(value) for value in values]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return _save(model, history, plan.precision, strategy.num_replicas_in_sync, out_dir, checkpoint)


def _fit(model: keras.Model, config: TrainConfig, splits: Splits, train_data: tuple[np.ndarray, np.ndarray],
         first_epoch: int, steps_per_epoch: int, tensorboard_dir: Path, callbacks: list) -> dict[str, list[float]]:
    """Epochs `first_epoch..config.epochs-1` of `model.fit`; returns their history."""
    images, labels = train_data
    fit = model.fit(
        make_dataset(images, labels, config.batch_size, shuffle_seed=config.seed, epochs=config.epochs,
                     first_epoch=first_epoch),
        validation_data=make_dataset(*load_split(splits, "val"), config.batch_size),
        epochs=config.epochs, initial_epoch=first_epoch, steps_per_epoch=steps_per_epoch,
        callbacks=[_tensorboard(config, tensorboard_dir, steps_per_epoch), *callbacks],
        shuffle=False, verbose=2,  # the dataset shuffles itself, seeded per epoch
    )
    return fit.history


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves every model and optimizer variable, RNG states included, after each finished epoch.

    Keras's BackupAndRestore keeps weights and optimizer state but not the dropout layers' seed
    generators, so a resumed run would drift from an uninterrupted one; this keeps all of them.
    """

    def __init__(self, resume_dir: Path):
        super().__init__()
        self.resume_dir = resume_dir
        self.state_path = resume_dir / "state.npz"
        self.history: dict[str, list[float]] = {}

    def restore(self, model: keras.Model) -> tuple[int, dict[str, list[float]]]:
        """Load the last saved state into `model`; returns the epoch to start at and the history so far."""
        if not self.state_path.exists():
            return 0, {}
        model.optimizer.build(model.trainable_variables)
        with np.load(self.state_path, allow_pickle=False) as state:
            for index, variable in enumerate(_all_variables(model)):
                variable.assign(state[f"v{index}"])
            epoch = int(state["epoch"])
            self.history = json.loads(str(state["history"]))
        log.info("train: resuming after epoch %d from %s", epoch + 1, self.resume_dir)
        return epoch + 1, {key: list(values) for key, values in self.history.items()}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.resume_dir.mkdir(parents=True, exist_ok=True)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        state = {f"v{index}": variable.numpy() for index, variable in enumerate(_all_variables(self.model))}
        # One file, one rename: the weights and the history of an epoch are saved together or not at all.
        write_atomically(self.state_path, lambda path: np.savez(
            path, epoch=epoch, history=np.array(json.dumps(self.history)), **state))

    def clear(self) -> None:
        shutil.rmtree(self.resume_dir, ignore_errors=True)


def make_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle_seed: int | None = None,
                 epochs: int = 1, first_epoch: int = 0) -> tf.data.Dataset:
    """Batches of (float32 pixels, labels): cached, prefetched, and with a seed, shuffled.

    Each epoch's shuffle is seeded by `shuffle_seed + epoch`, so epochs `first_epoch..epochs-1`
    see the same batches whether or not training was interrupted before `first_epoch`.
    """
    examples = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
    if shuffle_seed is None:
        batches = examples.batch(batch_size)
    else:
        batches = tf.data.Dataset.range(first_epoch, epochs).flat_map(
            lambda epoch: examples.shuffle(len(labels), seed=shuffle_seed + epoch).batch(batch_size))
    return batches.map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(tf.data.AUTOTUNE)


def log_images(tensorboard_dir: Path, images: np.ndarray) -> None:
    """Write a few raw training images to TensorBoard's Images tab."""
    if not len(images):
        return
    with tf.summary.create_file_writer(str(tensorboard_dir / "images")).as_default():
        scaled = tf.cast(images, tf.float32) / max(float(images.max()), 1.0)
        tf.summary.image("train examples", scaled, step=0, max_outputs=len(images))


def _save(model: keras.Model, history: dict[str, list[float]], precision: str, replicas: int, out_dir: Path,
          checkpoint: EpochCheckpoint | None) -> TrainedModel:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / "model.keras")
    (out_dir / "history.json").write_text(json.dumps(history, indent=2))
    if checkpoint:
        checkpoint.clear()
    log.info("train: %d epochs in %s on %d replica(s), val_accuracy %.4f", len(history["loss"]), precision,
             replicas, history["val_accuracy"][-1])
    return TrainedModel(out_dir / "model.keras", precision, out_dir / "history.json",
                        fingerprint_arrays(*model.get_weights()),
                        replicas)


def _all_variables(model: keras.Model) -> list:
    return list(model.variables) + list(model.optimizer.variables)


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
