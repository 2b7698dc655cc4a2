"""Train: seeded and deterministic, learns tiny data, logs scalars and images to TensorBoard."""

import json

import keras
import numpy as np

from components.artifacts import Normalization, SchemaAndStatistics
from components.config import ModelConfig, TrainConfig
from components.train import train
from components.train_plan import plan_training
from tests.conftest import make_images
from tests.test_validate import write_splits

TINY_MODEL = ModelConfig(conv_widths=(4,), dense_units=8, dropout=0.0)
TINY_TRAIN = TrainConfig(epochs=3, batch_size=8, learning_rate=1e-2, log_images=2, precision="float32")


def _train_once(tmp_path, name):
    (tmp_path / name).mkdir()
    splits = write_splits(tmp_path / name, make_images(12), val=make_images(4, seed=1))
    schema = SchemaAndStatistics(tmp_path / "s.json", tmp_path / "st.json", (6, 6, 1), 3)
    normalization = Normalization(tmp_path / "n.json", 60.0, 70.0)
    return train(TINY_TRAIN, TINY_MODEL, splits, schema, normalization, plan_training(TINY_TRAIN),
                 tmp_path / name / "train", tmp_path / name / "tensorboard")


def test_op_determinism_is_on_while_a_deterministic_train_runs_and_as_before_after_it(tmp_path, monkeypatch):
    import dataclasses

    from tensorflow.python.framework import config as op_determinism

    from components import train as train_module

    seen = []
    real_record = train_module._Controls.record

    def record_and_note(self, *args, **kwargs):
        seen.append(op_determinism.is_op_determinism_enabled())  # at the end of training, still inside train
        return real_record(self, *args, **kwargs)

    monkeypatch.setattr(train_module._Controls, "record", record_and_note)
    assert not op_determinism.is_op_determinism_enabled()
    deterministic = dataclasses.replace(TINY_TRAIN, deterministic=True)
    (tmp_path / "data").mkdir()
    splits = write_splits(tmp_path / "data", make_images(12), val=make_images(4, seed=1))
    schema = SchemaAndStatistics(tmp_path / "s.json", tmp_path / "st.json", (6, 6, 1), 3)
    normalization = Normalization(tmp_path / "n.json", 60.0, 70.0)
    for name, config in (("on", deterministic), ("off", TINY_TRAIN)):
        train(config, TINY_MODEL, splits, schema, normalization, plan_training(config), tmp_path / name,
              tmp_path / f"tb-{name}")
        assert not op_determinism.is_op_determinism_enabled()  # as before the call: a later run is unaffected
    assert seen == [True, False]


def test_two_runs_with_the_same_seed_give_identical_weights(tmp_path):
    first = keras.models.load_model(_train_once(tmp_path, "a").model_path)
    second = keras.models.load_model(_train_once(tmp_path, "b").model_path)
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_learns_tiny_data_and_writes_history_and_tensorboard(tmp_path):
    trained = _train_once(tmp_path, "a")
    history = json.loads(trained.history_path.read_text())
    assert len(history["loss"]) == 3 and history["loss"][-1] < history["loss"][0]
    assert history["accuracy"][-1] > 0.6
    assert trained.precision == "float32"
    event_dirs = {p.parent.name for p in (tmp_path / "a" / "tensorboard").rglob("events.out.tfevents.*")}
    assert {"train", "validation", "images"} <= event_dirs


def test_resuming_after_the_last_epoch_trains_no_more_and_keeps_the_result(tmp_path, monkeypatch):
    from components import train as train_module

    monkeypatch.setattr(train_module.EpochCheckpoint, "clear", lambda self: None)  # as if killed before clean-up
    (tmp_path / "data").mkdir()
    splits = write_splits(tmp_path / "data", make_images(12), val=make_images(4, seed=1))
    schema = SchemaAndStatistics(tmp_path / "s.json", tmp_path / "st.json", (6, 6, 1), 3)
    normalization = Normalization(tmp_path / "n.json", 60.0, 70.0)
    runs = [train(TINY_TRAIN, TINY_MODEL, splits, schema, normalization, plan_training(TINY_TRAIN), tmp_path / name,
                  tmp_path / f"tb-{name}", resume_dir=tmp_path / "resume") for name in ("first", "again")]
    assert runs[0].weights_sha256 == runs[1].weights_sha256
    # Weights and history of an epoch are saved in one file, so a kill cannot leave one without the other.
    assert sorted(p.name for p in (tmp_path / "resume").iterdir()) == ["state.npz"]
    with np.load(tmp_path / "resume" / "state.npz") as state:
        assert int(state["epoch"]) == 2 and len(json.loads(str(state["history"]))["loss"]) == 3
    assert json.loads(runs[1].history_path.read_text()) == json.loads(runs[0].history_path.read_text())
