"""Two phases in the one training loop (docs/pretrained.md, "Two phases"): a warm start under a new head
trains the head alone, then the body too, and a resumed run, the time budget and mixed precision hold
across the switch.

In process, on tiny data, from a parent export written here (the network's own files, random weights:
what matters is which weights move). The same claims through the pipeline, with SIGKILL and with two
worker processes, are in tests/test_two_phases_e2e.py (slow).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
import pytest

from components import train as train_module
from components.artifacts import Normalization, SchemaAndStatistics
from components.config import ModelConfig, TrainConfig
from components.model import NetworkSpec, build_model, load_trained
from components.saved_models import Parent
from components.train import train
from components.train_plan import plan_training
from components.train_schedule import HeadFirst, TimeBudget, WarmupCosine
from components.warm_start import weighted_leaves
from tests.conftest import make_images
from tests.test_validate import write_splits

MODEL = ModelConfig(conv_widths=(4,), dense_units=8, dropout=0.0)
SHAPE, MEAN, STD = (6, 6, 1), 60.0, 70.0
# 4 classes under a parent of 3: a new classifier. 48 training images in batches of 4: 12 steps an epoch,
# 48 planned; phase two begins with the first epoch past 0.4 x 48 = 19.2 steps: epoch 3 (step 24).
CLASSES = ("w", "x", "y", "z")
PHASED = TrainConfig(epochs=4, batch_size=4, head_share=0.4, patience=0, log_images=0, precision="float32")
STEPS, HEAD_EPOCHS, SWITCH_STEP = 12, 2, 24
BATCH_NORM_PARAMETERS = 4 * 4  # gamma, beta, moving mean and variance of the 4 channels: frozen throughout


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Parent:
    """An export as `model.init` reads it: network.json, model.weights.h5 and metadata.json, classes a, b, c."""
    version_dir = tmp_path_factory.mktemp("saved_models") / "parent" / "1"
    version_dir.mkdir(parents=True)
    keras.utils.set_random_seed(7)
    build_model(MODEL, SHAPE, 3, MEAN, STD).save_weights(version_dir / "model.weights.h5")
    NetworkSpec.of(MODEL, SHAPE, 3, MEAN, STD).write(version_dir / "network.json")
    (version_dir / "metadata.json").write_text(json.dumps({"class_names": ["a", "b", "c"]}))
    return Parent("parent/1", version_dir, "")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple:
    data_dir = tmp_path_factory.mktemp("data")
    splits = write_splits(data_dir / "splits", make_images(12, num_classes=4),
                          val=make_images(4, num_classes=4, seed=1), class_names=CLASSES)
    return (splits, SchemaAndStatistics(data_dir / "s.json", data_dir / "st.json", SHAPE, len(CLASSES)),
            Normalization(data_dir / "n.json", MEAN, STD))


def _train(config: TrainConfig, parent: Parent, data: tuple, out_dir: Path, resume_dir: Path | None = None):
    return train(config, MODEL, *data, plan_training(config), out_dir / "train", out_dir / "tensorboard",
                 resume_dir=resume_dir, parent=parent)


def _record(trained) -> dict:
    return json.loads(trained.training_path.read_text())


def _untimed(record: dict) -> dict:
    return {key: value for key, value in record.items()
            if key not in ("seconds", "images_per_second", "gflops_per_second")}


def _body(model: keras.Model) -> list[keras.Layer]:
    """The layers a warm start reuses: every weighted layer but the classifier (the last)."""
    return weighted_leaves(model)[:-1]


def _plain_rate(step: int, total_steps: int = 4 * STEPS) -> float:
    """The warm-up and cosine of a run without phases, at `step`."""
    return float(WarmupCosine(PHASED.learning_rate, PHASED.warmup, total_steps)(step))


def _train_noting_the_switch(config: TrainConfig, parent: Parent, data: tuple, out_dir: Path):
    """`_train`, and the body's weights when phase two begins (after phase one, before unfreezing)."""
    at_switch = []
    real_unfreeze = HeadFirst._unfreeze

    def unfreeze_and_note(self):
        at_switch.append([layer.get_weights() for layer in self.body])
        real_unfreeze(self)

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(HeadFirst, "_unfreeze", unfreeze_and_note)
        return _train(config, parent, data, out_dir), at_switch


@pytest.fixture(scope="module")
def uninterrupted(parent, data, tmp_path_factory):
    """The phased run in float32, and the body's weights at its switch."""
    return _train_noting_the_switch(PHASED, parent, data, tmp_path_factory.mktemp("uninterrupted"))


@pytest.mark.parametrize("precision", [
    "float32", "mixed_bfloat16", pytest.param("mixed_float16", marks=pytest.mark.slow)])
def test_the_head_trains_alone_then_the_body_at_a_lower_rate(parent, data, uninterrupted, tmp_path, precision):
    trained, at_switch = uninterrupted if precision == PHASED.precision else _train_noting_the_switch(
        dataclasses.replace(PHASED, precision=precision), parent, data, tmp_path)
    record, history = _record(trained), json.loads(trained.history_path.read_text())
    assert trained.precision == precision and record["starting_weights"] == "saved_models/parent/1"
    assert record["head_epochs"] == HEAD_EPOCHS and record["epochs_run"] == 4
    assert record["frozen_parameters"] == BATCH_NORM_PARAMETERS
    assert record["trainable_parameters"] == record["parameters"] - BATCH_NORM_PARAMETERS

    parents_body = _body(load_trained(parent.version_dir / "network.json", parent.version_dir / "model.weights.h5"))
    assert len(at_switch) == 1  # phase one left every weight of the body as the parent had it
    for layer, weights in zip(parents_body, at_switch[0], strict=True):
        for theirs, at_the_switch in zip(layer.get_weights(), weights, strict=True):
            np.testing.assert_array_equal(at_the_switch, theirs)
    # Phase two trained the body's convolution and dense layers; its batch norm stayed as the parent's.
    trained_body = _body(keras.models.load_model(trained.model_path))
    for layer, theirs in zip(trained_body, parents_body, strict=True):
        moved = [not np.array_equal(mine, their) for mine, their in zip(layer.get_weights(), theirs.get_weights())]
        frozen = isinstance(layer, keras.layers.BatchNormalization)
        assert moved == [not frozen] * len(moved), layer.name
    # Phase two's rate is train.fine_tune_lr_scale times the cosine's (its warm-up of 2.4 steps is over by
    # the epoch's end); the last epoch ends where the cosine does.
    expected = [_plain_rate(STEPS), _plain_rate(2 * STEPS), PHASED.fine_tune_lr_scale * _plain_rate(3 * STEPS), 0.0]
    np.testing.assert_allclose(history["learning_rate"], expected, rtol=1e-5, atol=1e-9)


class _Killed(Exception):
    """Stands for SIGKILL right after an epoch's checkpoint was written (tests/test_two_phases_e2e.py kills)."""


@pytest.mark.parametrize("killed_after", [
    pytest.param(0, marks=pytest.mark.slow),  # in phase one
    pytest.param(1, marks=pytest.mark.slow),  # the last epoch of phase one: the resumed run begins by switching
    2,  # the first epoch of phase two: the checkpoint holds the switch
])
def test_killed_after_any_epoch_a_resumed_run_ends_with_the_uninterrupted_weights(
        parent, data, uninterrupted, tmp_path, monkeypatch, killed_after):
    reference, _ = uninterrupted
    real_on_epoch_end = train_module.EpochCheckpoint.on_epoch_end

    def save_then_die(self, epoch, logs=None):
        real_on_epoch_end(self, epoch, logs)
        if epoch == killed_after:
            raise _Killed

    resume_dir = tmp_path / "resume"
    with monkeypatch.context() as patched:
        patched.setattr(train_module.EpochCheckpoint, "on_epoch_end", save_then_die)
        with pytest.raises(_Killed):
            _train(PHASED, parent, data, tmp_path / "killed", resume_dir)
    with np.load(resume_dir / "state.npz") as state:
        saved = {key: float(state[key]) for key in ("epoch", "fine_tune_from") if key in state}

    resumed = _train(PHASED, parent, data, tmp_path / "resumed", resume_dir)
    assert resumed.weights_sha256 == reference.weights_sha256
    assert json.loads(resumed.history_path.read_text()) == json.loads(reference.history_path.read_text())
    assert _untimed(_record(resumed)) == _untimed(_record(reference))  # head_epochs, parameter counts too
    assert _record(resumed)["head_epochs"] == HEAD_EPOCHS
    assert saved == {"epoch": killed_after, "fine_tune_from": SWITCH_STEP if killed_after >= HEAD_EPOCHS else -1.0}


@pytest.mark.parametrize("max_seconds, epochs_run, head_epochs", [
    (12.0, 4, HEAD_EPOCHS),  # 48 steps, 4 epochs: the switch where 4 planned epochs have it
    # 24 steps, 2 epochs: the first execution (it traces) gives no rate, so the budget plans its steps only
    # after the second, at the end of epoch 2, which is the last it buys: phase one took the whole budget.
    pytest.param(6.0, 2, 2, marks=pytest.mark.slow),
])
def test_under_a_time_budget_the_head_phase_is_a_share_of_the_steps_the_budget_buys(
        parent, data, tmp_path, monkeypatch, max_seconds, epochs_run, head_epochs):
    budgets = []

    def budget_on_a_step_clock(seconds, schedule, most_steps):
        """A budget whose clock reads 0.25 s per training step done: a machine of known, steady speed."""
        budget = TimeBudget(seconds, schedule, most_steps,
                            clock=lambda: 0.25 * float(budget.model.optimizer.iterations.numpy()))
        budgets.append(budget)
        return budget

    monkeypatch.setattr(train_module, "TimeBudget", budget_on_a_step_clock)
    config = dataclasses.replace(PHASED, epochs=100_000, max_seconds=max_seconds)
    record = _record(_train(config, parent, data, tmp_path))
    assert (record["stopped_by"], record["epochs_run"], record["head_epochs"]) == \
        ("time budget", epochs_run, head_epochs)
    assert budgets[0].spent() == max_seconds  # within the budget, to the step
    assert float(budgets[0].schedule.total_steps) == epochs_run * STEPS
