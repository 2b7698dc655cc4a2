"""Warm start (`model.init`): training goes on from an export's exact weights, or puts a new head on its body.

One parent is exported once for the module (the smoke preset, one epoch, in float32 and without
dropout, so a training step computes the same loss in the child as in the parent); each child
trains in the parent's workdir up to the train stage, watched by `tests/recorded_training.py`.
"""

from __future__ import annotations

import json
import shutil
import types
from dataclasses import dataclass
from pathlib import Path

import keras
import pytest

from components.config import TrainConfig
from components.model import load_trained, logits_of
from pipeline import run
from pipeline.config import resolve
from pipeline.orchestrator import execute_pipeline, stage_key
from pipeline.registry import STAGE_NAMES, RunPlaces, stage
from pipeline.selection import Selection
from tests.conftest import REPO_DIR, make_images, run_dirs_of, write_image_folder
from tests.recorded_training import TrainingRecorder, record_training, same_weights, weights_of

# Parent and children: one epoch, float32 (auto picks bfloat16 on some CPUs), no dropout: a step's loss is a
# function of the weights and the batch alone.
TRAINING = ("train.epochs=1", "train.precision=float32", "train.log_images=0")
SETTINGS = (*TRAINING, "model.dropout=0.0")
# max_p_value=1: one epoch need not pass the chance test, and the parent must be exported.
PARENT = (*SETTINGS, "evaluate.max_p_value=1", "export.parity_examples=16")
NETWORKS = REPO_DIR / "examples" / "networks.py"
DIGIT_NAMES = "zero,one,two,three,four,five,six,seven,eight,nine"


@dataclass(frozen=True)
class Parent:
    """The module's exported parent: the workdir it was made in (the children train there) and its version."""

    workdir: Path
    version_dir: Path  # saved_models/digits/1

    def model(self) -> keras.Model:
        return load_trained(self.version_dir / "network.json", self.version_dir / "model.weights.h5")


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Parent:
    workdir = tmp_path_factory.mktemp("warm_start")
    manifest = execute_pipeline(resolve("smoke", PARENT), workdir, Selection(last="export"))
    assert manifest["results"]["version"] == 1, manifest["results"]
    return Parent(workdir, workdir / "saved_models" / "digits" / "1")


def train_child(parent: Parent, *overrides: str) -> dict:
    """The manifest of a run up to train that starts from the parent's version folder."""
    config = resolve("smoke", [*SETTINGS, f"model.init={parent.version_dir}", *overrides])
    return execute_pipeline(config, parent.workdir, Selection(last="train"))


@pytest.fixture(scope="module")
def same_classes(parent) -> tuple[dict, TrainingRecorder]:
    """A child of the same data and classes: its manifest and what its training loop saw."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        recorder = record_training(monkeypatch)
        return train_child(parent), recorder


def test_with_the_same_classes_training_goes_on_from_the_parents_exact_weights(parent, same_classes):
    _, recorder = same_classes
    parent_model = parent.model()
    expected = weights_of(parent_model)
    assert [layer.name for layer in recorder.layers][-1] == "logits" and len(recorder.at_start) == len(expected) == 6
    for layer, mine, theirs in zip(recorder.layers, recorder.at_start, expected):
        assert same_weights(mine, theirs), f"{layer.name} does not start from the parent's weights"
    assert all(all(flags) for flags in recorder.trainable_after_epoch)  # nothing frozen: no new head to train first

    # The first step's loss is the parent's own on that batch, computed as the loop does (training mode: batch
    # statistics; label smoothing): the loop trained the parent's network, not only a copy of its numbers.
    images, labels = recorder.first_batch
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=TrainConfig().label_smoothing)
    parent_logits = keras.Model(parent_model.input, logits_of(parent_model))
    parent_loss = float(loss(labels, parent_logits(images, training=True)))
    assert recorder.first_loss == pytest.approx(parent_loss, rel=1e-5)
    fresh = keras.models.clone_model(parent_logits)  # the same network, untrained: the check can tell them apart
    assert abs(float(loss(labels, fresh(images, training=True))) - parent_loss) > 0.1


def test_the_manifest_and_the_training_record_name_the_parent(parent, same_classes):
    manifest, _ = same_classes
    assert manifest["results"]["parent"] == "digits/1"
    assert manifest["results"]["starting_weights"] == "saved_models/digits/1"
    record = json.loads((Path(manifest["run_dir"]) / "train" / "training.json").read_text())
    assert (record["starting_weights"], record["head_epochs"]) == ("saved_models/digits/1", 0)


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory) -> Path:
    """8x8 grayscale PNGs, as the digits are, of 3 classes instead of 10."""
    folder = tmp_path_factory.mktemp("three_classes")
    write_image_folder(folder, *make_images(20, shape=(8, 8, 1)))
    return folder


@pytest.mark.parametrize("classes", ["other names", "another count"])
def test_other_classes_get_a_new_head_on_the_parents_body_frozen_for_phase_one(classes, parent, three_classes,
                                                                              monkeypatch):
    data = f"data.class_names={DIGIT_NAMES}" if classes == "other names" else f"data.source=folder:{three_classes}"
    recorder = record_training(monkeypatch)
    # Two epochs, the head alone for the first 40 % of the steps: phase one is epoch 1, phase two epoch 2.
    manifest = train_child(parent, data, "data.max_train_examples=200", "train.epochs=2", "train.head_share=0.4")
    assert manifest["status"] == "succeeded"
    expected = weights_of(parent.model())
    head = recorder.index("logits")
    body = [index for index in range(len(expected)) if index != head]
    assert len(body) == 5 and not same_weights(recorder.at_start[head], expected[head])  # a new head
    for index in body:
        name = recorder.layers[index].name
        assert same_weights(recorder.at_start[index], expected[index]), f"{name} does not start as the parent's"
        assert same_weights(recorder.after_epoch[0][index], expected[index]), f"{name} moved in phase one"
        if recorder.is_batch_norm(index):  # frozen in both phases: their statistics stay the parent's
            assert same_weights(recorder.after_epoch[1][index], expected[index]), f"{name} moved in phase two"
        else:
            assert not same_weights(recorder.after_epoch[1][index], expected[index]), f"{name} not fine-tuned"
    assert not same_weights(recorder.after_epoch[0][head], recorder.at_start[head])  # the head trained in phase one
    assert [recorder.trainable_after_epoch[0][index] for index in body] == [False] * 5
    assert [recorder.trainable_after_epoch[1][index] for index in body] == [
        not recorder.is_batch_norm(index) for index in body]
    record = json.loads((Path(manifest["run_dir"]) / "train" / "training.json").read_text())
    assert record["head_epochs"] == 1


@pytest.mark.parametrize("overrides, theirs, mine", [
    (("model.dropout=0.0", "model.conv_widths=(4, 8)"), "cnn with conv_widths=[8, 16] on 8x8x1 images",
     "cnn with conv_widths=[4, 8] on 8x8x1 images"),
    (("model.dropout=0.0", "data.image_size=(12, 12)"), "cnn on 8x8x1 images", "cnn on 12x12x1 images"),
    ((f"model.builder={NETWORKS}:mlp",), "cnn on 8x8x1 images", "networks.py:mlp on 8x8x1 images"),
], ids=["other settings", "other input shape", "another builder"])
def test_a_parent_of_another_network_or_input_shape_is_refused_in_one_line(overrides, theirs, mine, parent, capsys):
    workdir = parent.workdir
    versions_before = sorted(path.name for path in (workdir / "saved_models" / "digits").iterdir())
    train_cache_before = train_cache_entries(workdir)
    argv = ["--workdir", str(workdir), "--preset", "smoke", *TRAINING, f"model.init={parent.version_dir}", *overrides]
    assert run.main(argv) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith(f"error: model.init=digits/1 is {theirs}, and this run "
                                                         f"trains {mine}; "), stderr
    manifest = json.loads((run_dirs_of(workdir)[-1] / "manifest.json").read_text())
    assert manifest["status"] == "failed" and f"error: {manifest['error']}\n" == stderr  # the reason kept with the run
    assert [record["name"] for record in manifest["stages"]][-1] == "train"
    assert sorted(path.name for path in (workdir / "saved_models" / "digits").iterdir()) == versions_before
    assert train_cache_entries(workdir) == train_cache_before  # no entry committed, no work folder left


def train_cache_entries(workdir: Path) -> list[str]:
    """Every entry and hidden work folder in train's cache; the lock files each claim leaves are no entry."""
    return sorted(path.name for path in (workdir / "cache" / "train").iterdir() if not path.name.endswith(".lock"))


def train_fingerprint(saved_models_dir: Path, *overrides: str) -> str:
    """train's cache key for the smoke preset and `overrides`, as the orchestrator computes it, with stand-ins for
    the earlier stages' artifacts (the same in every call)."""
    stand_in = types.SimpleNamespace(fingerprint="0" * 64, weights_sha256="0" * 64)
    config = resolve("smoke", overrides)
    return stage_key(stage("train"), config, dict.fromkeys(STAGE_NAMES, stand_in), RunPlaces(saved_models_dir)
                     ).fingerprint


def rewrite_weights(version_dir: Path) -> None:
    """Other trained weights in `version_dir/model.weights.h5`, as another training would leave there."""
    model = load_trained(version_dir / "network.json", version_dir / "model.weights.h5")
    for variable in model.trainable_weights:
        variable.assign(variable * 0.5)
    (version_dir / "model.weights.h5").unlink()
    model.save_weights(version_dir / "model.weights.h5")


def test_train_reruns_when_model_inits_folder_gets_a_newer_version_or_other_weights(parent, tmp_path):
    saved_models_dir = tmp_path / "saved_models"
    model_dir = saved_models_dir / "digits"
    shutil.copytree(parent.version_dir, model_dir / "1")
    newest = train_fingerprint(saved_models_dir, f"model.init={model_dir}")
    first = train_fingerprint(saved_models_dir, f"model.init={model_dir / '1'}")
    assert train_fingerprint(saved_models_dir, f"model.init={model_dir}") == newest  # nothing changed: cached
    shutil.copytree(model_dir / "1", model_dir / "2")
    rewrite_weights(model_dir / "2")
    newer = train_fingerprint(saved_models_dir, f"model.init={model_dir}")
    assert newer != newest  # the model folder now means version 2: another parent
    assert train_fingerprint(saved_models_dir, f"model.init={model_dir / '1'}") == first  # a named version stays
    rewrite_weights(model_dir / "2")  # the same version folder holding other weights (copied over by hand)
    assert train_fingerprint(saved_models_dir, f"model.init={model_dir}") not in (newest, newer)


def test_train_reruns_when_the_content_of_model_weights_file_changes(tmp_path):
    weights_path = tmp_path / "body.weights.h5"
    weights_path.write_bytes(b"the first weights")
    overrides = ("model.builder=mobilenet_v3_small", f"model.weights={weights_path}")
    key = train_fingerprint(tmp_path / "saved_models", *overrides)
    assert train_fingerprint(tmp_path / "saved_models", *overrides) == key
    weights_path.write_bytes(b"other weights, same name")
    assert train_fingerprint(tmp_path / "saved_models", *overrides) != key


def test_a_warm_start_may_change_the_dropout_but_not_the_layers(tmp_path):
    from components.config import ModelConfig
    from components.errors import UserError
    from components.model import NetworkSpec
    from components.saved_models import Parent
    from components.warm_start import _check_same_network

    parent = Parent("digits/1", tmp_path, "0" * 64)
    theirs = NetworkSpec.of(ModelConfig(dropout=0.5), (8, 8, 1), 10, 0.0, 1.0)
    _check_same_network(theirs, NetworkSpec.of(ModelConfig(dropout=0.1), (8, 8, 1), 10, 0.0, 1.0), parent)
    with pytest.raises(UserError, match="dense_units=128.*dense_units=64"):
        _check_same_network(theirs, NetworkSpec.of(ModelConfig(dense_units=64), (8, 8, 1), 10, 0.0, 1.0), parent)
    backbone = NetworkSpec.of(ModelConfig(builder="resnet50", options={"dropout": 0.4}), (32, 32, 3), 10, 0.0, 1.0)
    _check_same_network(backbone, NetworkSpec.of(ModelConfig(builder="resnet50"), (32, 32, 3), 10, 0.0, 1.0), parent)
