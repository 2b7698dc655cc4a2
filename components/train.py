"""Train: fit the CNN on the training split with tf.data and tf.distribute, seeded, logging to TensorBoard."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import config as op_determinism  # is/enable/disable_op_determinism

from components.artifacts import Normalization, SchemaAndStatistics, Splits, TrainedModel, TrainingRecord, Tuning
from components.atomic import write_atomically
from components.batches import (
    BatchPlan,
    evaluation_batches,
    steps_per_epoch,
    steps_per_execution,
    streamed_evaluation_batches,
    streamed_training_batches,
    training_batches,
)
from components.config import ModelConfig, TrainConfig
from components.errors import first_line
from components.hashing import fingerprint_arrays
from components.model import NetworkSpec, build_model, forward_flops, logits_of
from components.profiling import StepMarkedTensorBoard
from components.saved_models import Parent
from components.shards.layout import split_files, split_nbytes
from components.shards.tf_reader import load_split, parse_examples
from components.strategy import make_strategy
from components.tensorboard_log import EventLog
from components.train_loop import LoopSettings, TrainingLoop
from components.train_plan import TrainingPlan, choose_xla, prefetch_device, scale_batch
from components.train_schedule import (
    EpochTimer,
    HeadFirst,
    KeepBest,
    StepLimit,
    TimeBudget,
    WarmupCosine,
    planned_steps,
)
from components.train_tensorboard import ConfusionImages, LearningRateLog, log_labelled_images
from components.tune_space import apply_values
from components.warm_start import StartingPoint, starting_point

log = logging.getLogger(__name__)


def train(config: TrainConfig, model_config: ModelConfig, splits: Splits, schema: SchemaAndStatistics,
          normalization: Normalization, plan: TrainingPlan, out_dir: Path, tensorboard_dir: Path,
          resume_dir: Path | None = None, parent: Parent | None = None, tuning: Tuning | None = None) -> TrainedModel:
    """The train stage: `train_network` with the config's values, or those the tune stage chose (`tuning`).

    Args:
        tuning: tune's output, whose best values replace the config's; None when tune did not run.
        The others: as `train_network` takes them.
    """
    if tuning is not None:
        config, model_config = apply_values(tuning.read()["best"], config, model_config)
        log.info("train: with the values tune chose: %s", tuning.read()["best"])
    return train_network(config, model_config, splits, schema, normalization, plan, out_dir, tensorboard_dir,
                         resume_dir, parent)


def train_network(config: TrainConfig, model_config: ModelConfig, splits: Splits, schema: SchemaAndStatistics,
                  normalization: Normalization, plan: TrainingPlan, out_dir: Path, tensorboard_dir: Path,
                  resume_dir: Path | None = None, parent: Parent | None = None,
                  callbacks: Sequence[keras.callbacks.Callback] = ()) -> TrainedModel:
    """Train the model and save it as `model.keras`, with `history.json` (per epoch) and `training.json`.

    The network is trained on its logits (a numerically stable loss, with label smoothing) and
    saved with its float32 softmax for serving. The weights kept are those of the best epoch on
    validation; training ends after the planned epochs, after `patience` epochs without a better
    one, or when the time budget is spent. Under train.strategy=multi_worker every worker calls this
    with the same arguments but its own `out_dir` and `tensorboard_dir`; only the chief saves the
    epoch checkpoint in the shared `resume_dir`.

    Args:
        config: the `train` section.
        model_config: the `model` section.
        splits: ingest's output; `train` is fitted, `val` picks the epoch kept.
        schema: validate's output; the model's input shape and width come from it.
        normalization: preprocess's output, baked into the model's first layer.
        plan: the precision, strategy and XLA choice `train.precision`, `train.strategy` and
            `train.xla` resolved to.
        out_dir: folder for the model, its history and its training record; created.
        tensorboard_dir: where TensorBoard's scalars, images and profiler trace go.
        resume_dir: where the state after each finished epoch is kept; a later call with the same
            folder resumes from it and ends with the same weights as an uninterrupted run (unless a
            time budget, which depends on the machine's speed, ended it).
        parent: the export `model.init` names: training starts from its weights (a new head for other
            classes, trained alone first); None = from the builder's own.
        callbacks: called after the loop's own at every hook (a tune trial's pruning); one that raises
            ends training with its exception.

    Returns:
        The saved model's path and weights hash, the precision policy it trained in, its records.
    """
    strategy = make_strategy(plan.strategy)
    determinism_before = op_determinism.is_op_determinism_enabled()
    _seed_everything(config.seed, config.deterministic)
    replicas = strategy.num_replicas_in_sync
    num_examples = splits.num_examples["train"]
    batch_size, peak_learning_rate = scale_batch(config.batch_size, config.learning_rate, replicas)
    steps = steps_per_epoch(num_examples, batch_size)
    keras.mixed_precision.set_global_policy(plan.precision)
    try:
        with strategy.scope():
            # Synchronized batch statistics: otherwise each replica keeps its own moving averages.
            model = build_model(model_config, schema.image_shape, schema.num_classes, normalization.mean,
                                normalization.std, synchronized_batch_norm=replicas > 1)
            network = NetworkSpec.of(model_config, schema.image_shape, schema.num_classes, normalization.mean,
                                     normalization.std)
            start = starting_point(model, network, model_config, parent, splits.class_names)
            most_steps = planned_steps(config.epochs, num_examples, steps, warm=parent is not None and not start.body)
            epochs = math.ceil(most_steps / steps)
            schedule = WarmupCosine(peak_learning_rate, config.warmup, most_steps,
                                    config.fine_tune_lr_scale if start.body else 1.0)
            trainee = _compile_trainee(model, config, schedule, steps)
            if start.body:  # every weight either phase trains: the optimizer's variables are the same in both
                trainee.optimizer.build(trainee.trainable_variables)
        loop = TrainingLoop(trainee, strategy, LoopSettings(
            batch_size, steps, trainee.steps_per_execution, schema.num_classes, config.label_smoothing,
            choose_xla(config.xla, plan.devices), plan.strategy.num_workers), shared=[schedule.total_steps])
        controls = _Controls(config, schedule, most_steps, resume_dir, strategy.extended.should_checkpoint,
                             start.body)
        first_epoch, history = controls.restore(trainee)
        loop.check_workers_agree(first_epoch, f"{plan.precision}, {plan.strategy.kind} on {replicas} replicas, "
                                              f"{epochs} epochs of {steps} steps")
        started = time.perf_counter()
        with EventLog(tensorboard_dir / "images") as event_log:
            if first_epoch == 0 and config.log_images:
                log_labelled_images(event_log, *load_split(splits, "train", limit=config.log_images),
                                    splits.class_names)
            if first_epoch < epochs and not controls.stopped():  # killed after its last epoch: nothing left
                hooks = [LearningRateLog(), *controls.callbacks(),  # the learning rate first: history keeps it
                         ConfusionImages(event_log, lambda: loop.confusion, splits.class_names),
                         _tensorboard(config, tensorboard_dir, most_steps), *callbacks]
                fitted = loop.fit(_training_input(config, splits, schema, plan, batch_size, steps * replicas,
                                                  epochs, first_epoch),
                                  _validation_input(config, splits, schema.num_classes, batch_size),
                                  epochs, first_epoch, hooks)
                for key, values in fitted.items():
                    history[key] = history.get(key, []) + values
        controls.keep_best.restore(model)
        record = controls.record(history, min(num_examples, steps * batch_size), time.perf_counter() - started,
                                 epochs, batch_size, forward_flops(model), model, start)
    finally:
        keras.mixed_precision.set_global_policy("float32")
        _set_op_determinism(determinism_before)
    return _save(model, network, history, record, plan, replicas, out_dir, controls, start)


def _training_input(config: TrainConfig, splits: Splits, schema: SchemaAndStatistics, plan: TrainingPlan,
                    global_batch: int, replica_batches: int, epochs: int, first_epoch: int
                    ) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """Per input pipeline, its batches: from memory when the split is small, streamed from its shards if not.

    `replica_batches` is an epoch's steps times the replicas, split evenly between the pipelines.
    """
    in_memory = split_nbytes(splits, "train") <= config.in_memory_mb * 1e6
    arrays = load_split(splits, "train") if in_memory else None
    log.info("train: %s the training split (%.0f MB; train.in_memory_mb=%g)",
             "gathering from memory" if in_memory else "streaming", split_nbytes(splits, "train") / 1e6,
             config.in_memory_mb)

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        batch_plan = BatchPlan(schema.num_classes, context.get_per_replica_batch_size(global_batch),
                               replica_batches // context.num_input_pipelines, config.seed, epochs, first_epoch,
                               config.augment, config.max_shift, context.input_pipeline_id,
                               context.num_input_pipelines)
        if arrays is not None:
            return training_batches(*arrays, batch_plan, prefetch_device(plan))
        image_bytes = int(np.prod(schema.image_shape)) * np.dtype(splits.dtype).itemsize
        return streamed_training_batches(split_files(splits, "train"), parse_examples(schema.image_shape, splits.dtype),
                                         schema.image_shape, batch_plan,
                                         max(1024, int(config.shuffle_mb * 1e6) // image_bytes))

    return dataset_fn


VALIDATION_BATCH_BYTES = 32 * 10**6  # pixels per validation batch (at most 1,024 images): few calls, bounded memory


def _validation_input(config: TrainConfig, splits: Splits, num_classes: int, batch_size: int) -> tf.data.Dataset:
    """The validation split in order: from memory when it is small, else streamed (every worker reads all of it).

    Batches are larger than training's: each is one call into TensorFlow, whose fixed cost dominated
    validation in batches of 64 (2 s of a Fashion-MNIST epoch).
    """
    image_bytes = int(np.prod(splits.image_shape)) * np.dtype(splits.dtype).itemsize
    batch_size = max(batch_size, min(1024, VALIDATION_BATCH_BYTES // image_bytes))
    if split_nbytes(splits, "val") <= config.in_memory_mb * 1e6:
        return evaluation_batches(*load_split(splits, "val"), num_classes, batch_size)
    return streamed_evaluation_batches(split_files(splits, "val"), parse_examples(splits.image_shape, splits.dtype),
                                       num_classes, batch_size)


def _compile_trainee(model: keras.Model, config: TrainConfig, schedule: WarmupCosine, steps: int) -> keras.Model:
    """The model up to its logits (sharing its layers), compiled with its optimizer for the training loop.

    Under mixed_float16, Keras wraps the optimizer in a LossScaleOptimizer (`auto_scale_loss`), which
    the loop's step scales the loss with.
    """
    trainee = keras.Model(model.input, logits_of(model), name="logits")
    # xprof times steps only when one execution is one step: it ignores step markers around a tf.while_loop.
    executions = 1 if config.profile_batches else steps_per_execution(steps)
    trainee.compile(optimizer=keras.optimizers.Adam(schedule), steps_per_execution=executions)
    return trainee


class _Controls:
    """The callbacks that decide how training goes and ends, and the checkpoint that saves their state."""

    def __init__(self, config: TrainConfig, schedule: WarmupCosine, most_steps: int, resume_dir: Path | None,
                 writes: bool = True, body: list[keras.Layer] | None = None):
        self.keep_best = KeepBest(config.patience)
        self.timer = EpochTimer()
        self.budget = TimeBudget(config.max_seconds, schedule, most_steps) if config.max_seconds else None
        self.head_first = HeadFirst(body, config.head_share, config.unfreeze_share, schedule,
                                    self.keep_best) if body else None
        self.step_limit = StepLimit(most_steps)
        parts = [part for part in (self.keep_best, self.budget, self.head_first) if part is not None]
        self.checkpoint = EpochCheckpoint(resume_dir, parts, writes) if resume_dir else None

    def restore(self, model: keras.Model) -> tuple[int, dict[str, list[float]]]:
        for callback in self.callbacks():
            callback.set_model(model)
        return self.checkpoint.restore(model) if self.checkpoint else (0, {})

    def callbacks(self) -> list[keras.callbacks.Callback]:
        """In the order they must be called: HeadFirst first, so that at an epoch's start the loop and the
        budget see phase two's trainable weights (the budget then measures the speed anew); at an epoch's
        end the budget, the best epoch, then the checkpoint, which saves what they decided."""
        chosen = [self.head_first, self.timer, self.step_limit, self.budget, self.keep_best, self.checkpoint]
        return [callback for callback in chosen if callback is not None]

    def stopped(self) -> bool:
        return self.keep_best.stopped or bool(self.budget and self.budget.stopped)

    def record(self, history: dict[str, list[float]], num_examples: int, seconds: float, epochs: int,
               batch_size: int, flops_per_image: int, model: keras.Model, start: StartingPoint) -> TrainingRecord:
        """What `training.json` says: how training ended, the epoch kept, and how fast it went.

        Throughput is that of a steady epoch's training steps (tracing and validation left out);
        a training step costs about 3x the forward pass's FLOPs (see `forward_flops`).
        """
        reason = ("time budget" if self.budget and self.budget.stopped else
                  "patience" if self.keep_best.stopped else "planned epochs")
        fine_tune_epoch = self.head_first.fine_tune_epoch if self.head_first else None
        steady = self.timer.steady_seconds(retraced=() if fine_tune_epoch is None else (fine_tune_epoch,))
        images_per_second = num_examples / steady if steady else 0.0
        return TrainingRecord(
            epochs_planned=epochs, epochs_run=len(history.get("loss", [])), best_epoch=self.keep_best.best_epoch + 1,
            stopped_by=reason, seconds=round(seconds, 3), batch_size=batch_size,
            images_per_second=round(images_per_second, 1), train_flops_per_image=3 * flops_per_image,
            gflops_per_second=round(images_per_second * 3 * flops_per_image / 1e9, 2), parameters=model.count_params(),
            trainable_parameters=_count(model.trainable_weights), frozen_parameters=_count(model.non_trainable_weights),
            starting_weights=start.weights, head_epochs=self._head_epochs(history))

    def _head_epochs(self, history: dict[str, list[float]]) -> int:
        """Epochs that trained the head alone (all of them if phase two never began); 0 without phases."""
        if self.head_first is None:
            return 0
        began = self.head_first.fine_tune_epoch
        return len(history.get("loss", [])) if began is None else began


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves every model and optimizer variable, RNG states included, after each finished epoch.

    Keras's BackupAndRestore keeps weights and optimizer state but not the dropout layers' seed
    generators, nor the best epoch's weights and the time spent, so a resumed run would drift from
    an uninterrupted one; this keeps all of them, with the state of the callbacks in `parts`.
    """

    def __init__(self, resume_dir: Path, parts: list, writes: bool = True):
        super().__init__()
        self.resume_dir, self.parts = resume_dir, parts
        self.writes = writes  # False on a worker other than the chief: it reads the chief's checkpoint only
        self.state_path = resume_dir / "state.npz"
        self.history: dict[str, list[float]] = {}

    def restore(self, model: keras.Model) -> tuple[int, dict[str, list[float]]]:
        """Load the last saved state into `model`; returns the epoch to start at and the history so far."""
        if not self.state_path.exists():
            return 0, {}
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        with np.load(self.state_path, allow_pickle=False) as state:
            for index, variable in enumerate(_all_variables(model)):
                variable.assign(state[f"v{index}"])
            for part in self.parts:
                part.load_state(state)
            epoch = int(state["epoch"])
            self.history = json.loads(str(state["history"]))
        log.info("train: resuming after epoch %d from %s", epoch + 1, self.resume_dir)
        return epoch + 1, {key: list(values) for key, values in self.history.items()}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        if not self.writes:
            return
        self.resume_dir.mkdir(parents=True, exist_ok=True)
        state = {f"v{index}": variable.numpy() for index, variable in enumerate(_all_variables(self.model))}
        for part in self.parts:
            state.update(part.state())
        # One file, one rename: the weights and the history of an epoch are saved together or not at all.
        write_atomically(self.state_path, lambda path: np.savez(
            path, epoch=epoch, history=np.array(json.dumps(self.history)), **state))

    def clear(self) -> None:
        if self.writes:
            shutil.rmtree(self.resume_dir, ignore_errors=True)


def _save(model: keras.Model, network: NetworkSpec, history: dict[str, list[float]], record: TrainingRecord,
          plan: TrainingPlan, replicas: int, out_dir: Path, controls: _Controls, start: StartingPoint) -> TrainedModel:
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = _save_model(model, out_dir)
    network.write(out_dir / "network.json")
    (out_dir / "history.json").write_text(json.dumps(history, indent=2))
    (out_dir / "training.json").write_text(record.to_json())
    if controls.checkpoint:
        controls.checkpoint.clear()
    weights_sha256 = fingerprint_arrays(*model.get_weights())
    log.info("train: %d epochs in %s on %d replica(s), kept epoch %d (val_accuracy %.4f), stopped by %s; "
             "weights sha256 %s", record.epochs_run, plan.precision, replicas, record.best_epoch,
             history["val_accuracy"][record.best_epoch - 1], record.stopped_by, weights_sha256)
    return TrainedModel(model_path, plan.precision, out_dir / "history.json", weights_sha256, replicas,
                        out_dir / "training.json", plan.strategy.kind, plan.strategy.num_workers,
                        out_dir / "network.json", network.name, start.parent)


def _save_model(model: keras.Model, out_dir: Path) -> Path:
    """`model.keras`, Keras's whole-model file; the weights alone where Keras cannot write the network's config.

    Keras saves a subclassed network only when it implements `get_config`; later stages rebuild the
    network from its code (`network.json`) and need only the weights, so either file serves them.
    """
    try:
        model.save(out_dir / "model.keras")
        return out_dir / "model.keras"
    except NotImplementedError as error:
        (out_dir / "model.keras").unlink(missing_ok=True)
        log.info("train: Keras cannot save this network whole (%s); saved its weights in model.weights.h5",
                 first_line(error))
        model.save_weights(out_dir / "model.weights.h5")
        return out_dir / "model.weights.h5"


def _count(weights: list) -> int:
    return int(sum(np.prod(weight.shape) for weight in weights))


def _all_variables(model: keras.Model) -> list:
    return list(model.variables) + list(model.optimizer.variables)


def _seed_everything(seed: int, deterministic: bool) -> None:
    keras.utils.set_random_seed(seed)
    _set_op_determinism(deterministic)


def _set_op_determinism(enabled: bool) -> None:
    """TensorFlow's op determinism, for this process: on for `train.deterministic=true` while train runs,
    and back to what it was after, so a later run in the same process (the Python API, a notebook)
    trains as a fresh process would. TensorFlow's public API can only turn it on; its own tests turn it
    off with `disable_op_determinism`, from the module used here."""
    if enabled:
        op_determinism.enable_op_determinism()
    else:
        op_determinism.disable_op_determinism()


def _tensorboard(config: TrainConfig, tensorboard_dir: Path, most_steps: int) -> StepMarkedTensorBoard:
    profile_batch: int | tuple[int, int] = 0
    if config.profile_batches:
        first, last = config.profile_batches[0], min(config.profile_batches[-1], most_steps)
        profile_batch = (first, last) if first <= last else 0
    return StepMarkedTensorBoard(str(tensorboard_dir), profile_batch=profile_batch)
