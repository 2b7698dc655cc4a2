"""Tune: search train's and the network's settings with Optuna within a time budget, before train.

Each trial is the project's own training (`train_network`) on the training split, scored on the
validation split, reporting its validation accuracy after every epoch so that a poor trial is pruned.
The first trial is the config as given, so the search can only keep or beat it on validation.

Why a loop of Optuna's ask/tell and not `study.optimize(timeout=...)`: Optuna's timeout only stops
new trials from starting, and a trial started just before it runs to its end. Here each trial gets
what is left of the budget as its `train.max_seconds` (the learning-rate schedule is planned to end
within it), less what a trial costs outside training (measured on the trials before), so the stage
ends within its budget. The study lives in Optuna's SQLite storage under the stage's resume folder: a
killed search resumes with its finished trials, and the time they spent counts against the budget.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import optuna
import tensorflow as tf

from components.artifacts import Normalization, SchemaAndStatistics, Splits, Tuning
from components.atomic import write_json_atomically
from components.backbones import BACKBONES
from components.config import ModelConfig, TrainConfig, TuneConfig
from components.errors import UserError, first_line
from components.model import HEAD_DROPOUT
from components.shards.layout import LAYOUT_FILE, labels_path, read_layout
from components.tensorboard_log import EventLog
from components.train import train_network
from components.train_plan import TrainingPlan
from components.train_schedule import planned_epochs
from components.tune_space import (
    OPTIONS_PREFIX,
    Dimension,
    apply_values,
    config_value,
    default_space,
    including,
    parse_space,
)

log = logging.getLogger(__name__)

STUDY_FILE = "study.sqlite"
STUDY_NAME = "tune"
SPENT_ATTR = "seconds_spent"  # the study's record of the budget spent, kept after every epoch
# Held back from the last trial: writing the record (tuning.json, Optuna's importance) after it.
FINISH_SECONDS = 3.0
# fANOVA's cost grows with the trials and its trees: 16 trees took 0.3 s over 100 trials here and 2.2 s over 400
# (Optuna's default 64 trees, 7.2 s over 400), so the newest 200 fit within FINISH_SECONDS.
IMPORTANCE_TRIALS, IMPORTANCE_TREES = 200, 16
# A trial's cost outside training (building the network, its input pipeline, saving), assumed until measured.
FIRST_OVERHEAD_SECONDS = 5.0
MIN_TRIAL_SECONDS = 5.0  # less training time than this is no trial worth starting
# A trial reports its validation accuracy by progress through its own schedule, in tenths: trials of
# other lengths are compared at the same point of their learning-rate decay. By epoch, a 16-epoch trial
# (its learning rate still high at epoch 3) would be judged against 4-epoch ones (theirs decayed) and
# pruned for being long. The first tenth says little: the median pruner judges from the second tenth on
# (with 6 planned epochs, after the first), Hyperband's first rung is the third (as measured, docs/tuning.md).
PROGRESS_STEPS = 10
MEDIAN_FIRST_TENTH, HYPERBAND_FIRST_TENTH = 2, 3


def tune(config: TuneConfig, train_config: TrainConfig, model_config: ModelConfig, splits: Splits,
         schema: SchemaAndStatistics, normalization: Normalization, plan: TrainingPlan, out_dir: Path,
         tensorboard_dir: Path, resume_dir: Path | None = None, started: float | None = None) -> Tuning:
    """Search within `config.max_seconds` and write what it chose (`tuning.json`) and the study (`study.sqlite`).

    Args:
        config: the `tune` section: the budget, the space, the most trials, the pruner.
        train_config, model_config: the sections the trials start from; the first trial is them as given.
        splits: ingest's output; trials read its train and val splits only.
        schema, normalization, plan: as train receives them.
        out_dir: folder for `tuning.json` and `study.sqlite`; created.
        tensorboard_dir: each trial is a run `tune/trial-NNN` under it, with its values in HParams.
        resume_dir: where the study is kept while it runs; a later call with the same folder resumes it.
        started: time.perf_counter() when the stage started (its imports included); None = now.

    Returns:
        Where the record and the study are.

    Raises:
        UserError: every trial failed (the first one's reason is given).
    """
    budget = Budget(config.max_seconds, started=time.perf_counter() if started is None else started)
    num_train = splits.num_examples["train"]
    space = search_space(config, train_config, model_config, num_train)
    defaults = config_values(space, train_config, model_config, num_train)
    storage_dir = resume_dir or out_dir / "study"
    study = open_study(storage_dir / STUDY_FILE, train_config.seed, config.pruner)
    budget.spent_before = float(study.user_attrs.get(SPENT_ATTR, 0.0))
    with tempfile.TemporaryDirectory(prefix="tune-") as scratch:
        trainer = TrialTrainer(train_config, model_config, without_test(splits, Path(scratch) / "splits"), schema,
                               normalization, plan, Path(scratch), tensorboard_dir / "tune", study, budget)
        search(study, space, trainer.run, budget, config.max_trials, defaults)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = tuning_record(study, space, defaults, budget)
    write_json_atomically(out_dir / "tuning.json", record)
    shutil.copyfile(storage_dir / STUDY_FILE, out_dir / STUDY_FILE)
    if resume_dir:
        shutil.rmtree(resume_dir, ignore_errors=True)
    log.info("tune: %d trials in %.0f s of %.0f, best validation accuracy %s: %s", len(record["trials"]),
             record["seconds"], config.max_seconds, record["best_val_accuracy"], record["best"])
    return Tuning(out_dir / "tuning.json", out_dir / STUDY_FILE)


def search_space(config: TuneConfig, train: TrainConfig, model: ModelConfig, num_train: int) -> tuple[Dimension, ...]:
    """`tune.space`, or the default space for this network and this many training images, widened to hold the
    config's own values (so that the first trial is the config as given)."""
    if config.space:
        return parse_space(config.space, train, model)
    space = default_space(model, planned_epochs(train.epochs, num_train))
    return including(space, config_values(space, train, model, num_train))


def config_values(space: Sequence[Dimension], train: TrainConfig, model: ModelConfig,
                  num_train: int) -> dict[str, Any]:
    """The config's own value of each searched setting, `train.epochs=0` as the epochs it plans for the data, a
    backbone's unset `model.options.dropout` as the one its head is built with (a network of your own's unset
    options stay None: only its builder knows them)."""
    values = {dimension.key: config_value(dimension.key, train, model) for dimension in space}
    if values.get("train.epochs") == 0:
        values["train.epochs"] = planned_epochs(0, num_train)
    head_dropout = OPTIONS_PREFIX + "dropout"
    if model.builder in BACKBONES and head_dropout in values and values[head_dropout] is None:
        values[head_dropout] = HEAD_DROPOUT
    return values


@dataclass
class Budget:
    """The search's time: what is left of it, and how much of it a new trial may train for."""

    seconds: float
    clock: Callable[[], float] = time.perf_counter
    spent_before: float = 0.0  # by earlier, interrupted sessions of the same search
    overhead: float = FIRST_OVERHEAD_SECONDS  # a trial's cost outside training, held back from its time
    overheads: list[float] = field(default_factory=list)  # measured, one per trial
    started: float | None = None  # on `clock`, when the stage started; None = when the budget is made

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = self.clock()

    def spent(self) -> float:
        return self.spent_before + self.clock() - self.started

    def trial_seconds(self) -> float:
        """Training time the next trial may take; below MIN_TRIAL_SECONDS no trial should start."""
        return self.seconds - self.spent() - self.overhead - FINISH_SECONDS

    def measured(self, trial_seconds: float, training_seconds: float) -> None:
        """Learn a finished trial's cost outside training: the most seen, with a margin (it varies by trial)."""
        self.overheads.append(max(trial_seconds - training_seconds, 0.0))
        self.overhead = 1.25 * max(self.overheads)


@dataclass(frozen=True)
class TrialResult:
    """What a trial reports: its score (validation accuracy of the epoch train would keep) and its training time."""

    val_accuracy: float
    training_seconds: float


class TrialPruned(Exception):
    """A trial stopped early by the pruner; carries its training time so far."""

    def __init__(self, training_seconds: float):
        super().__init__(f"pruned after {training_seconds:.1f} s of training")
        self.training_seconds = training_seconds


TrialRunner = Callable[[optuna.Trial, dict[str, Any], float], TrialResult]


def search(study: optuna.Study, space: Sequence[Dimension], run_trial: TrialRunner, budget: Budget,
           max_trials: int, baseline: dict[str, Any]) -> None:
    """Ask, run and tell trials until the budget (or `max_trials`) is spent.

    Args:
        study: where the trials are recorded; a resumed one keeps its finished trials.
        space: the dimensions each trial samples.
        run_trial: trains one trial with its values for at most the given seconds of training; raises
            TrialPruned when the pruner stops it, UserError when its values cannot work.
        budget: the clock; a trial starts only while it leaves MIN_TRIAL_SECONDS of training.
        max_trials: most finished trials in all (0 = no limit).
        baseline: the config's own values, enqueued as the first trial of a new study.
    """
    if not study.trials:
        study.enqueue_trial({dimension.key: dimension.as_optuna(baseline[dimension.key]) for dimension in space
                             if dimension.holds(baseline[dimension.key])}, skip_if_exists=True)
    log.info("tune: %.1f s of the budget spent before the first trial of this session", budget.spent())
    try:
        _search_trials(study, space, run_trial, budget, max_trials)
    finally:  # stopped between epochs (Ctrl-C, SIGTERM): a resumed search counts the time since the last save too
        study.set_user_attr(SPENT_ATTR, budget.spent())


def _search_trials(study: optuna.Study, space: Sequence[Dimension], run_trial: TrialRunner, budget: Budget,
                   max_trials: int) -> None:
    while not max_trials or _num_finished(study) < max_trials:
        seconds = budget.trial_seconds()
        if seconds < MIN_TRIAL_SECONDS:
            log.info("tune: %.1f s left: too little for another trial", budget.seconds - budget.spent())
            break
        started = budget.clock()  # the sampler's time (TPE's grows with the trials) is part of a trial's overhead
        trial = study.ask()
        values = {dimension.key: dimension.suggest(trial) for dimension in space}
        trial.set_user_attr("started", round(budget.spent(), 2))  # on the budget's clock: the stage's start is 0
        training_seconds, value, state = 0.0, None, optuna.trial.TrialState.COMPLETE
        try:
            result = run_trial(trial, values, seconds)
            training_seconds, value = result.training_seconds, result.val_accuracy
        except TrialPruned as pruned:
            training_seconds, state = pruned.training_seconds, optuna.trial.TrialState.PRUNED
        except UserError as error:
            trial.set_user_attr("error", str(error))
            state = optuna.trial.TrialState.FAIL
            log.warning("tune: trial %d failed: %s", trial.number, error)
        trial.set_user_attr("ended", round(budget.spent(), 2))
        study.tell(trial, value, state=state)
        budget.measured(budget.clock() - started, training_seconds)
        study.set_user_attr(SPENT_ATTR, budget.spent())


def _num_finished(study: optuna.Study) -> int:
    return sum(trial.state.is_finished() for trial in study.trials)


def open_study(path: Path, seed: int, pruner: str) -> optuna.Study:
    """The study in Optuna's SQLite storage at `path`: new, or as a killed search left it.

    A trial left running by a killed search is marked failed (its time counts, its values are not
    trusted). The sampler is seeded by `seed` and the trials already there, so a resumed search does
    not sample the same values again.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    previous = optuna.load_study(study_name=STUDY_NAME, storage=storage) if path.exists() and _has_study(storage) \
        else None
    num_before = len(previous.trials) if previous else 0
    if previous:
        for trial in previous.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        log.info("tune: resuming a search of %d trials (%.0f s spent)", num_before,
                 previous.user_attrs.get(SPENT_ATTR, 0.0))
    sampler = optuna.samplers.TPESampler(seed=seed + num_before, n_startup_trials=5, multivariate=True)
    return optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="maximize", sampler=sampler,
                               pruner=make_pruner(pruner), load_if_exists=True)


def _has_study(storage: optuna.storages.BaseStorage) -> bool:
    return any(summary.study_name == STUDY_NAME for summary in storage.get_all_studies())


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """`tune.pruner`, judging trials by tenths of their schedule: below the median of the trials before at the
    same tenth (from the second on), Hyperband's successive halving over tenths, or never."""
    if name == "median":  # Optuna judges a step from n_warmup_steps on
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=MEDIAN_FIRST_TENTH)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=HYPERBAND_FIRST_TENTH, max_resource=PROGRESS_STEPS,
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


def without_test(splits: Splits, view_dir: Path) -> Splits:
    """The splits as a trial sees them: a folder of links to the train and val files alone.

    A trial cannot read the test split by mistake: it is not in the folder, nor in its `splits.json`.
    """
    layout = read_layout(splits.splits_dir)
    kept = {name: entry for name, entry in layout["splits"].items() if name != "test"}
    view_dir.mkdir(parents=True)
    for name, entry in kept.items():
        for shard in entry["shards"]:
            (view_dir / shard).symlink_to(splits.splits_dir / shard)
        labels_path(view_dir, name).symlink_to(labels_path(splits.splits_dir, name))
    (view_dir / LAYOUT_FILE).write_text(json.dumps({**layout, "splits": kept}))
    return dataclasses.replace(splits, splits_dir=view_dir,
                               num_examples={name: count for name, count in splits.num_examples.items()
                                             if name != "test"})


class TrialTrainer:
    """Runs one trial: `train_network` with the trial's values on the splits without test, pruned by epoch."""

    def __init__(self, train_config: TrainConfig, model_config: ModelConfig, splits: Splits,
                 schema: SchemaAndStatistics, normalization: Normalization, plan: TrainingPlan, scratch_dir: Path,
                 tensorboard_dir: Path, study: optuna.Study, budget: Budget):
        self.train_config, self.model_config, self.splits = train_config, model_config, splits
        self.schema, self.normalization, self.plan = schema, normalization, plan
        self.scratch_dir, self.tensorboard_dir, self.study, self.budget = scratch_dir, tensorboard_dir, study, budget

    def run(self, trial: optuna.Trial, values: dict[str, Any], seconds: float) -> TrialResult:
        """Train with `values` for at most `seconds` of training; the kept epoch's validation accuracy."""
        train, model = apply_values(values, self.train_config, self.model_config)
        limit = min(train.max_seconds, seconds) if train.max_seconds else seconds
        train = dataclasses.replace(train, max_seconds=limit, log_images=0, profile_batches=())
        run_dir = self.tensorboard_dir / f"trial-{trial.number:03d}"
        with EventLog(run_dir) as event_log:
            event_log.hparams(values, trial_id=f"trial-{trial.number:03d}")
        reporter = PruningReporter(trial, planned_epochs(train.epochs, self.splits.num_examples["train"]),
                                   lambda: self.study.set_user_attr(SPENT_ATTR, self.budget.spent()))
        log.info("tune: trial %d for at most %.0f s of training: %s", trial.number, limit, values)
        try:  # a user's builder may refuse the values in its own way (Keras's layers raise ValueError)
            kept_epoch = train_network(train, model, self.splits, self.schema, self.normalization, self.plan,
                                       self.scratch_dir / f"trial-{trial.number}", run_dir,
                                       callbacks=[reporter]).record().best_epoch
        except (ValueError, TypeError, tf.errors.ResourceExhaustedError) as error:  # or too big for the device
            raise UserError(f"trial {trial.number} with {values}: {type(error).__name__}: {first_line(error)}") \
                from None
        finally:
            shutil.rmtree(self.scratch_dir / f"trial-{trial.number}", ignore_errors=True)
        trial.set_user_attr("val_accuracy_by_epoch", reporter.accuracies)
        if reporter.pruned:
            raise TrialPruned(reporter.training_seconds())
        score = reporter.accuracies[kept_epoch - 1]
        with EventLog(run_dir) as event_log:
            event_log.scalar("tune/val_accuracy", score, kept_epoch)
        return TrialResult(score, reporter.training_seconds())


class PruningReporter(keras.callbacks.Callback):
    """Reports the trial's validation accuracy by tenths of its schedule; stops the trial when the pruner says so."""

    def __init__(self, trial: optuna.Trial, planned_epochs: int, after_epoch: Callable[[], None]):
        super().__init__()
        self.trial, self.planned_epochs, self.after_epoch = trial, planned_epochs, after_epoch
        self.accuracies: list[float] = []  # by epoch
        self.pruned = False
        self._reported = 0  # the last tenth reported
        self._started: float | None = None
        self._ended: float | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_train_end(self, logs: dict | None = None) -> None:
        self._ended = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        accuracy = float((logs or {})["val_accuracy"])
        self.accuracies.append(accuracy)
        self.after_epoch()
        tenth = progress_step(epoch, self.planned_epochs)
        if tenth <= self._reported:  # more than ten epochs: a tenth is reported at its first epoch
            return
        self._reported = tenth
        self.trial.report(accuracy, tenth)
        if self.trial.should_prune():  # training ends as after its last epoch: its logs are closed, its files written
            self.pruned = self.model.stop_training = True
            log.info("tune: trial %d pruned after epoch %d of %d (validation accuracy %.4f)", self.trial.number,
                     epoch + 1, self.planned_epochs, accuracy)

    def training_seconds(self) -> float:
        if self._started is None:
            return 0.0
        return (self._ended or time.perf_counter()) - self._started


def progress_step(epoch: int, planned_epochs: int) -> int:
    """The tenth of a `planned_epochs` schedule that epoch `epoch` (from 0) ends in: 1 to PROGRESS_STEPS."""
    return min(PROGRESS_STEPS, math.ceil(PROGRESS_STEPS * (epoch + 1) / max(planned_epochs, 1)))


def tuning_record(study: optuna.Study, space: Sequence[Dimension], defaults: dict[str, Any],
                  budget: Budget) -> dict[str, Any]:
    """`tuning.json`: the chosen values against the config's, every trial, and each setting's importance.

    When the budget ran out before any trial finished (start-up took it, on a busy machine), the values
    chosen are the config's own, and `best_val_accuracy` is None.

    Raises:
        UserError: trials ran and every one failed; the first failure's line.
    """
    completed = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    errors = [trial.user_attrs["error"] for trial in study.trials if "error" in trial.user_attrs]
    if not completed and errors:
        raise UserError(f"tune: every trial failed; the first: {errors[0]}")
    best = study.best_trial if completed else None
    if best is None:
        log.warning("tune: no trial finished within tune.max_seconds=%g (start-up took %.0f s); train uses the "
                    "config as given", budget.seconds, budget.spent())
    return {
        "best": {dimension.key: _decoded(dimension, best.params[dimension.key]) for dimension in space} if best
        else {key: value for key, value in defaults.items() if value is not None},  # train's own, unchanged
        "defaults": defaults,
        "best_val_accuracy": best.value if best else None,
        "best_trial": best.number if best else None,
        "space": {dimension.key: json.loads(dimension.describe()) for dimension in space},
        "seconds": round(budget.spent(), 2),
        "budget_seconds": budget.seconds,
        "trials": [_trial_record(trial, space) for trial in study.trials
                   if trial.state != optuna.trial.TrialState.WAITING],
        "importance": _importance(study, completed),
    }


def _decoded(dimension: Dimension, value: Any) -> Any:
    return json.loads(value) if dimension.choices else value


def _trial_record(trial: optuna.trial.FrozenTrial, space: Sequence[Dimension]) -> dict[str, Any]:
    """A trial in `tuning.json`; `started` and `ended` are on the budget's clock (seconds since the stage started,
    the sessions before a resume included)."""
    return {"number": trial.number, "state": trial.state.name.lower(), "value": trial.value,
            "values": {dimension.key: _decoded(dimension, trial.params[dimension.key]) for dimension in space
                       if dimension.key in trial.params},
            "val_accuracy_by_epoch": trial.user_attrs.get("val_accuracy_by_epoch", []),
            "started": trial.user_attrs.get("started"), "ended": trial.user_attrs.get("ended"),
            **({"error": trial.user_attrs["error"]} if "error" in trial.user_attrs else {})}


def _importance(study: optuna.Study, completed: list) -> dict[str, float]:
    """Optuna's parameter importance (fANOVA, seeded) over the newest IMPORTANCE_TRIALS completed trials; {} with
    too few to tell."""
    if len(completed) < 3:
        return {}
    sample = optuna.create_study(direction="maximize")  # in memory
    sample.add_trials(completed[-IMPORTANCE_TRIALS:])
    evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=IMPORTANCE_TREES, seed=0)
    try:
        importance = optuna.importance.get_param_importances(sample, evaluator=evaluator)
    except (RuntimeError, ValueError) as error:  # e.g. every trial had the same values
        log.info("tune: no importance: %s", first_line(error))
        return {}
    return {key: round(float(value), 4) for key, value in importance.items() if math.isfinite(value)}
