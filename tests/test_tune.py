"""Tune: the search keeps within its budget (a fake clock), resumes a killed study, never reads the test split,
and train uses what it chose; one real search through the CLI."""

import dataclasses
import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

from components import train as train_module
from components import tune as tune_module
from components.artifacts import Normalization, SchemaAndStatistics, Tuning
from components.config import ModelConfig, TrainConfig, TuneConfig
from components.errors import UserError
from components.train_plan import plan_training
from components.tune import (
    FINISH_SECONDS,
    FIRST_OVERHEAD_SECONDS,
    MIN_TRIAL_SECONDS,
    SPENT_ATTR,
    STUDY_FILE,
    STUDY_NAME,
    Budget,
    TrialPruned,
    TrialResult,
    config_values,
    open_study,
    search,
    search_space,
    tune,
    tuning_record,
    without_test,
)
from components.tune_space import Dimension, apply_values
from pipeline.config import resolve
from tests.conftest import make_images, run_pipeline_cli
from tests.test_validate import write_splits

SPACE = (Dimension("train.learning_rate", 1e-3, 1e-2, log=True), Dimension("train.epochs", 2, 8, integer=True),
         Dimension("model.conv_widths", choices=([8, 16], [16, 32])))
BASELINE = {"train.learning_rate": 3e-3, "train.epochs": 3, "model.conv_widths": [16, 32]}
TINY_MODEL = ModelConfig(conv_widths=(4,), dense_units=8, dropout=0.0)
TINY_TRAIN = TrainConfig(epochs=3, batch_size=8, learning_rate=3e-3, log_images=0, precision="float32")


class FakeClock:
    """A clock that moves only when told: a trial's length is what the test says."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Call:
    """A trial as `run_trial` received it: when (since the budget started), for how long, with which values."""

    number: int
    started: float
    seconds: float
    values: dict


# What trial N does (N modulo the list): finish after so many seconds of training (None: all it is given), be
# pruned after so many, or be refused (its values cannot work) before training.
KINDS = [("complete", 10.0), ("pruned", 6.0), ("error", 0.0), ("complete", 15.0), ("complete", None)]


def fake_trials(clock: FakeClock, started: float, overheads, calls: list[Call]):
    """A `run_trial` that moves the clock: each trial costs its overhead (3/4 before training) and its training."""

    def run_trial(trial: optuna.Trial, values: dict, seconds: float) -> TrialResult:
        calls.append(Call(trial.number, clock() - started, seconds, values))
        kind, training = KINDS[trial.number % len(KINDS)]
        overhead = next(overheads)
        clock.advance(0.75 * overhead)
        if kind == "error":
            raise UserError(f"trial {trial.number}: model.dropout=2.0 cannot work")
        training = seconds if training is None else min(seconds, training)
        clock.advance(training + 0.25 * overhead)
        if kind == "pruned":
            raise TrialPruned(training)
        return TrialResult(0.5 + 0.01 * trial.number, training)

    return run_trial


def _search(study_path: Path | None, budget_seconds: float, overheads, max_trials: int = 0):
    """`search` over SPACE with fake trials on a fake clock, the study in SQLite at `study_path` (None: in memory).

    Returns:
        The study, each trial's `Call`, the budget and the clock.
    """
    clock = FakeClock()
    budget = Budget(budget_seconds, clock=clock, started=clock())
    study = open_study(study_path, seed=0, pruner="median") if study_path else \
        optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0),
                            pruner=tune_module.make_pruner("median"))
    calls: list[Call] = []
    search(study, SPACE, fake_trials(clock, budget.started, overheads, calls), budget, max_trials, BASELINE)
    return study, calls, budget, clock


# 35: after two trials 3 s of training are left, too few to start a third (MIN_TRIAL_SECONDS).
@pytest.mark.parametrize("budget_seconds", [30, 35, 120])
def test_no_trial_starts_that_could_not_end_within_the_budget(budget_seconds, tmp_path):
    overhead = 4.0  # each trial's cost outside training; the budget assumes FIRST_OVERHEAD_SECONDS until it knows
    study, calls, budget, clock = _search(tmp_path / STUDY_FILE, budget_seconds, iter(lambda: overhead, None))
    assert calls and calls[0].values == BASELINE  # the first trial is the config as given
    for call in calls:
        assert call.seconds >= MIN_TRIAL_SECONDS
        # Training for all it was given, plus its overhead, it ends in time to write the record.
        assert call.started + overhead + call.seconds <= budget_seconds - FINISH_SECONDS + 1e-9, call
    spent = clock() - budget.started
    assert spent <= 1.05 * budget_seconds
    assert budget.trial_seconds() < MIN_TRIAL_SECONDS  # it stopped because no further trial fits, not before
    assert study.user_attrs[SPENT_ATTR] == pytest.approx(spent)
    states = [trial.state for trial in study.trials]
    assert len(states) == len(calls) and all(state.is_finished() for state in states)
    if budget_seconds >= 120:  # enough trials to see every kind
        assert states[:5] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                              optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE,
                              optuna.trial.TrialState.COMPLETE]
        assert "model.dropout=2.0 cannot work" in study.trials[2].user_attrs["error"]
        assert calls[4].seconds > 40  # the last kind trains for all it is given: the budget is what ends it


@pytest.mark.parametrize("seed", range(2))
def test_the_search_keeps_within_its_budget_however_its_trials_vary(seed):
    rng = random.Random(seed)
    _, calls, budget, clock = _search(None, 90, iter(lambda: rng.uniform(0.5, 4.5), None))
    assert len(calls) >= 3 and clock() - budget.started <= 1.05 * 90


def test_the_search_stops_at_max_trials_whatever_their_state():
    study, calls, _, _ = _search(None, 10_000, iter(lambda: 1.0, None), max_trials=4)
    assert [call.number for call in calls] == [0, 1, 2, 3] and len(study.trials) == 4
    assert calls[0].values == BASELINE


def test_the_budget_holds_back_the_overhead_measured_and_what_earlier_sessions_spent():
    clock = FakeClock()
    budget = Budget(100, clock=clock, started=clock() - 7)  # the stage started 7 s before the budget was made
    assert budget.spent() == 7
    assert budget.trial_seconds() == 100 - 7 - FIRST_OVERHEAD_SECONDS - FINISH_SECONDS
    budget.spent_before = 20
    clock.advance(3)
    assert budget.trial_seconds() == 100 - 30 - FIRST_OVERHEAD_SECONDS - FINISH_SECONDS
    budget.measured(trial_seconds=10, training_seconds=8)
    assert budget.trial_seconds() == 100 - 30 - 1.25 * 2 - FINISH_SECONDS
    budget.measured(trial_seconds=10, training_seconds=6)  # the most seen, with a margin
    budget.measured(trial_seconds=10, training_seconds=9.5)
    assert budget.overhead == 1.25 * 4 and budget.trial_seconds() == 100 - 30 - 5 - FINISH_SECONDS


def test_choices_of_lists_go_through_optuna_and_back():
    study = optuna.create_study()
    study.enqueue_trial({"model.conv_widths": SPACE[2].as_optuna([16, 32])})
    assert SPACE[2].suggest(study.ask()) == [16, 32]
    assert SPACE[1].suggest(study.ask()) in range(2, 9)


@pytest.mark.parametrize("dimension, value", [
    (Dimension("model.dropout", choices=(0, 0.25, 0.5)), 0.0),  # model.dropout=0 is 0.0 in the config
    (Dimension("train.batch_size", choices=(32.0, 64.0, 128.0)), 64),
    (Dimension("model.conv_widths", choices=([8, 16], [16, 32])), (16, 32)),  # a tuple in the config
])
def test_a_config_value_equal_to_a_choice_written_otherwise_is_enqueued_as_that_choice(dimension, value):
    study = optuna.create_study()
    assert dimension.holds(value)
    study.enqueue_trial({dimension.key: dimension.as_optuna(value)})
    # Optuna refused the text "0.0" among "0", "0.25" and "0.5"; a tuple comes back as its list
    assert dimension.suggest(study.ask()) == (list(value) if isinstance(value, tuple) else value)


def test_a_backbones_unset_head_dropout_is_the_one_its_head_is_built_with():
    model = ModelConfig(builder="mobilenet_v3_small")
    space = search_space(TuneConfig(max_seconds=30), TrainConfig(), model, num_train=1_000)
    values = config_values(space, TrainConfig(), model, num_train=1_000)
    assert values["model.options.dropout"] == 0.2  # backbone_network's default
    assert all(dimension.holds(values[dimension.key]) for dimension in space)  # so the first trial is the config


def test_a_search_without_a_finished_trial_hands_train_only_values_it_can_set():
    study = optuna.create_study(direction="maximize")
    clock = FakeClock()
    record = tuning_record(study, SPACE[:1], {"train.learning_rate": 3e-3, "model.options.width": None},
                           Budget(30, clock=clock, started=clock()))
    assert record["best"] == {"train.learning_rate": 3e-3} and record["best_val_accuracy"] is None


@pytest.fixture
def tiny_data(tmp_path):
    """Splits of 36 training, 12 validation and 9 test 6x6 images, with their schema and normalization."""
    splits = write_splits(tmp_path / "ingest", make_images(12), val=make_images(4, seed=1))
    schema = SchemaAndStatistics(tmp_path / "s.json", tmp_path / "st.json", (6, 6, 1), 3)
    return splits, schema, Normalization(tmp_path / "n.json", 60.0, 70.0)


def test_without_test_is_a_folder_of_the_train_and_val_files_alone(tiny_data, tmp_path):
    splits = tiny_data[0]
    view = without_test(splits, tmp_path / "view")
    names = sorted(path.name for path in view.splits_dir.iterdir())
    assert names == sorted(["splits.json", "train-labels.npy", "val-labels.npy",
                            *(path.name for path in splits.splits_dir.glob("train-*.tfrecord")),
                            *(path.name for path in splits.splits_dir.glob("val-*.tfrecord"))])
    layout = json.loads((view.splits_dir / "splits.json").read_text())
    assert set(layout["splits"]) == {"train", "val"} and set(view.num_examples) == {"train", "val"}
    for path in view.splits_dir.iterdir():
        if path.name != "splits.json":
            assert path.resolve() == (splits.splits_dir / path.name).resolve()  # links, not copies
    assert (view.fingerprint, view.class_names, view.image_shape) == (splits.fingerprint, splits.class_names,
                                                                      splits.image_shape)


def test_a_real_search_reads_no_test_file(tiny_data, tmp_path, monkeypatch):
    """Every reader a trial uses is spied on; the test files are deleted, so a read of them would fail too."""
    from components.shards import layout, tf_reader

    splits, schema, normalization = tiny_data
    read: list[tuple[Path, str]] = []

    def spy(module, name):
        real = getattr(module, name)

        def reader(splits, split, *args, **kwargs):
            read.append((splits.splits_dir, split))
            return real(splits, split, *args, **kwargs)

        monkeypatch.setattr(module, name, reader)

    for module, name in ((train_module, "load_split"), (train_module, "split_files"), (train_module, "split_nbytes"),
                         (tf_reader, "load_split"), (tf_reader, "split_files"), (tf_reader, "image_chunks"),
                         (layout, "split_files"), (layout, "split_labels")):
        spy(module, name)
    for path in [*splits.splits_dir.glob("test-*")]:
        path.unlink()
    config = TuneConfig(max_seconds=30, max_trials=2, space={"train.learning_rate": [1e-3, 1e-2, "log"]},
                        pruner="none")
    tuning = tune(config, TINY_TRAIN, TINY_MODEL, splits, schema, normalization, plan_training(TINY_TRAIN),
                  tmp_path / "tune", tmp_path / "tensorboard")
    assert read and {split for _, split in read} == {"train", "val"}
    assert splits.splits_dir not in {folder for folder, _ in read}  # only the view without test
    record = tuning.read()
    assert [trial["state"] for trial in record["trials"]] == ["complete", "complete"]
    assert record["trials"][0]["values"] == {"train.learning_rate": 3e-3}  # the config as given
    assert set(record["best"]) == {"train.learning_rate"} and record["seconds"] <= 30
    assert sorted(path.name for path in (tmp_path / "tensorboard" / "tune").iterdir()) == ["trial-000", "trial-001"]


@pytest.fixture
def fake_trainer(monkeypatch):
    """TrialTrainer.run replaced by a fake on a fake clock: what each trial does is the test's `plan[number]`."""
    state = {"clock": FakeClock(0.0), "calls": [], "plan": {}}

    def run(self, trial, values, seconds):
        state["calls"].append(Call(trial.number, self.budget.spent(), seconds, values))
        clock = state["clock"]
        if state["plan"].get(trial.number) == "killed":
            clock.advance(5)  # an epoch, reported as PruningReporter does, then the process dies
            self.study.set_user_attr(SPENT_ATTR, self.budget.spent())
            raise KeyboardInterrupt
        clock.advance(10)
        return TrialResult(0.5 + 0.01 * trial.number, training_seconds=8)

    monkeypatch.setattr(tune_module.TrialTrainer, "run", run)
    monkeypatch.setattr(tune_module, "Budget", lambda *args, **kwargs: Budget(*args, clock=state["clock"], **kwargs))
    return state


def test_a_killed_search_resumes_with_its_trials_and_the_time_they_spent(tiny_data, tmp_path, fake_trainer):
    splits, schema, normalization = tiny_data
    config = TuneConfig(max_seconds=60, max_trials=5, space={"train.learning_rate": [1e-3, 1e-2, "log"],
                                                             "model.dropout": [0.0, 0.5]})
    search_in = functools.partial(tune, config, TINY_TRAIN, TINY_MODEL, splits, schema, normalization,
                                  plan_training(TINY_TRAIN), tmp_path / "tune", tmp_path / "tensorboard",
                                  resume_dir=tmp_path / "resume")
    fake_trainer["plan"] = {2: "killed"}
    with pytest.raises(KeyboardInterrupt):
        search_in(started=0.0)
    first = fake_trainer["calls"]
    assert [call.number for call in first] == [0, 1, 2]
    left = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{tmp_path / 'resume' / STUDY_FILE}")
    assert [trial.state.name for trial in left.trials] == ["COMPLETE", "COMPLETE", "RUNNING"]
    assert left.user_attrs[SPENT_ATTR] == 25  # two trials of 10 s and the killed one's epoch

    fake_trainer.update(clock=FakeClock(0.0), calls=[], plan={})
    record = search_in(started=0.0).read()
    second = fake_trainer["calls"]
    assert [call.number for call in second] == [3, 4]  # none of the finished trials again: 5 in all
    assert second[0].started == 25  # the budget counts the first session's time
    assert second[0].seconds == 60 - 25 - FIRST_OVERHEAD_SECONDS - FINISH_SECONDS
    assert [trial["state"] for trial in record["trials"]] == ["complete", "complete", "fail", "complete", "complete"]
    for call in first[:2]:
        assert record["trials"][call.number]["values"] == call.values  # kept as they were
        assert record["trials"][call.number]["value"] == 0.5 + 0.01 * call.number
    assert record["seconds"] == 25 + 2 * 10 and record["best_trial"] == 4
    assert not (tmp_path / "resume").exists()  # finished: nothing left to resume
    assert len(optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{tmp_path / 'tune' / STUDY_FILE}")
               .trials) == 5


def test_train_uses_the_values_tune_chose(tmp_path, monkeypatch):
    received = []
    monkeypatch.setattr(train_module, "train_network", lambda config, model_config, *args: received.append(
        (config, model_config)) or "trained")
    best = {"train.batch_size": 16, "train.learning_rate": 0.002, "model.conv_widths": [4, 8], "model.dropout": 0.25}
    (tmp_path / "tuning.json").write_text(json.dumps({"best": best}))
    tuning = Tuning(tmp_path / "tuning.json", tmp_path / STUDY_FILE)
    args = (None, None, None, plan_training(TINY_TRAIN), tmp_path / "train", tmp_path / "tensorboard")
    assert train_module.train(TINY_TRAIN, TINY_MODEL, *args, tuning=tuning) == "trained"
    assert received[-1] == (dataclasses.replace(TINY_TRAIN, batch_size=16, learning_rate=0.002),
                            dataclasses.replace(TINY_MODEL, conv_widths=(4, 8), dropout=0.25))
    train_module.train(TINY_TRAIN, TINY_MODEL, *args)  # no search: the config as given
    assert received[-1] == (TINY_TRAIN, TINY_MODEL)


# One real search through the CLI, shared by the tests below (slow): two trials, then train with the values chosen (the
# later stages and the default space: the slow test), then the same command again. Smoke's conv widths and batch
# size are not in the space, so train's network and batches show whether it used the values chosen.
SEARCHED = {"train.learning_rate": [0.001, 0.01, "log"], "model.conv_widths": [[16, 32], [32, 64]],
            "train.batch_size": {"choices": [16, 64]}}
TUNED_RUN = ("--preset", "smoke", "--until", "train", "tune.max_seconds=60", "tune.max_trials=2",
             f"tune.space={json.dumps(SEARCHED)}")
SETTINGS = [arg for arg in TUNED_RUN if "=" in arg]


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tuned")
    first = run_pipeline_cli(workdir, *TUNED_RUN)
    assert first.returncode == 0, first.stderr
    again = run_pipeline_cli(workdir, *TUNED_RUN)
    assert again.returncode == 0, again.stderr
    return first, again


@pytest.mark.slow  # a real search through the CLI: the default suite stays under 150 s
def test_the_search_records_its_trials_within_its_budget(tuned_run):
    manifest = tuned_run[0].manifest
    stage = next(record for record in manifest["stages"] if record["name"] == "tune")
    assert stage["status"] == "succeeded" and stage["seconds"] <= 1.05 * 60
    results = manifest["results"]
    record = json.loads((tuned_run[0].run_dir / "tune" / "tuning.json").read_text())
    assert results["tune_trials"] == 2 and results["tune_pruned"] == 0  # the median rule waits for 2 trials
    assert results["tune_seconds"] == record["seconds"] <= 60
    assert list(results["tune_best"]) == list(SEARCHED)
    completed = [trial for trial in record["trials"] if trial["state"] == "complete"]
    assert results["tune_best_val_accuracy"] == max(trial["value"] for trial in completed) > 0.5
    assert results["tune_best"] == next(trial["values"] for trial in completed
                                        if trial["value"] == results["tune_best_val_accuracy"])
    assert record["defaults"] == {"train.learning_rate": 3e-3, "model.conv_widths": [8, 16], "train.batch_size": 32}
    assert record["trials"][0]["values"]["train.learning_rate"] == 3e-3  # the first: the config, where it can be


@pytest.mark.slow  # a real search through the CLI: the default suite stays under 150 s
def test_train_used_the_values_the_search_chose(tuned_run):
    from components.model import build_model

    run = tuned_run[0]
    best = run.manifest["results"]["tune_best"]
    config = resolve("smoke", SETTINGS)
    train_config, model_config = apply_values(best, config.train, config.model)
    assert model_config.conv_widths in ((16, 32), (32, 64)) and train_config.batch_size in (16, 64)
    training = json.loads((run.run_dir / "train" / "training.json").read_text())
    assert training["batch_size"] == best["train.batch_size"]
    assert training["parameters"] == build_model(model_config, (8, 8, 1), 10, mean=0.0, std=1.0).count_params()


@pytest.mark.slow  # a real search through the CLI: the default suite stays under 150 s
def test_each_trial_is_a_tensorboard_run_with_its_values_in_hparams(tuned_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = tuned_run[0]
    record = json.loads((run.run_dir / "tune" / "tuning.json").read_text())
    tune_dir = run.run_dir / "tensorboard" / "tune"
    assert sorted(path.name for path in tune_dir.iterdir()) == ["trial-000", "trial-001"]
    for trial in record["trials"]:
        trial_dir = tune_dir / f"trial-{trial['number']:03d}"
        assert list(trial_dir.glob("events.out.tfevents.*")) and list(trial_dir.glob("validation/events.*"))
        events = EventAccumulator(str(trial_dir), size_guidance={"tensors": 0}).Reload()
        content = events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        assert set(hparams) == set(trial["values"])
        assert hparams["train.learning_rate"].number_value == pytest.approx(trial["values"]["train.learning_rate"])
        assert hparams["model.conv_widths"].string_value == str(trial["values"]["model.conv_widths"])
        assert hparams["train.batch_size"].number_value == trial["values"]["train.batch_size"]


@pytest.mark.slow  # a real search through the CLI: the default suite stays under 150 s
def test_a_rerun_of_the_same_search_is_fully_cached(tuned_run):
    first, again = tuned_run
    assert {record["name"]: record["status"] for record in again.manifest["stages"]} == {
        record["name"]: "cached" for record in first.manifest["stages"]}
    assert again.manifest["results"]["tune_best"] == first.manifest["results"]["tune_best"]


@pytest.mark.slow
def test_a_whole_run_that_the_budget_ends_keeps_within_it_and_reruns_cached(tmp_path):
    run = run_pipeline_cli(tmp_path, "--preset", "smoke", "tune.max_seconds=30")
    assert run.returncode == 0, run.stderr
    stage = next(record for record in run.manifest["stages"] if record["name"] == "tune")
    assert stage["status"] == "succeeded" and stage["seconds"] <= 1.05 * 30
    results = run.manifest["results"]
    assert results["tune_trials"] >= 2 and results["tune_seconds"] <= 30
    record = json.loads((run.run_dir / "tune" / "tuning.json").read_text())
    assert results["tune_pruned"] == [trial["state"] for trial in record["trials"]].count("pruned")
    assert all(trial["ended"] <= 30 for trial in record["trials"])
    assert f"tuned        {results['tune_trials']} trials" in run.stdout
    again = run_pipeline_cli(tmp_path, "--preset", "smoke", "tune.max_seconds=30")
    assert again.returncode == 0, again.stderr
    assert [(record["name"], record["status"]) for record in again.manifest["stages"]] == [  # push stays off
        (record["name"], "skipped" if record["status"] == "skipped" else "cached") for record in run.manifest["stages"]]
