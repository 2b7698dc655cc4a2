"""Every config key, changed one at a time: which stages rerun must follow from what each stage reads.

For each key the same finished workdir is copied and run again with that key changed. Which stages
rerun is compared with `RERUNS`, a table written by hand from what each stage reads (not from the
registry, nor from the fingerprints the orchestrator records). Then, from the files alone: every
stage that came from the cache read inputs whose files hold the same bytes as in the first run
(every file of every input stage's output, with the few exceptions `_comparable` names and says why),
and the version the first run exported is byte for byte what it was. A stale result fails here
whatever the fingerprints claim; so does a needless rerun.

A new config key fails `test_every_key_has_a_probe` until it is given a value and an expectation here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from components.errors import UserError
from pipeline.config import resolve, valid_keys
from pipeline.registry import STAGES
from tests.conftest import REPO_DIR, make_images, write_image_folder

# evaluate.max_p_value=1: one epoch of a tiny network need not beat chance, and the base run must be exported;
# evaluate.max_regression=1: every probe's model is exported too, whatever its accuracy (blessing is not tested
# here); train.precision=float32: `auto` picks bfloat16 on some CPUs, and the same weights must come out anywhere.
BASE = ("train.epochs=1", "train.batch_size=16", "train.precision=float32", "train.profile_batches=()",
        "train.log_images=2", "export.parity_examples=16", "evaluate.max_p_value=1", "evaluate.max_regression=1")
NETWORKS = REPO_DIR / "examples" / "networks.py"
# A valid value other than the base's for every key; a tuple holds overrides the change needs first.
PROBES: dict[str, str | tuple[str, ...]] = {
    "data.source": "folder:{other_folder}",
    "data.tfds_data_dir": "/nowhere/tfds",
    "data.class_names": "x,y,z",
    "data.download": "true",
    "data.val_fraction": "0.2",
    "data.test_fraction": "0.3",
    "data.max_train_examples": "30",
    "data.seed": "1",
    "data.image_size": "(8, 8)",
    "data.channels": "3",
    "data.on_bad_file": "skip",
    "data.shard_mb": "0.01",  # the tiny splits stay one shard each: ingest reruns, nothing after it
    "validate.imbalance_warn_ratio": "2.0",
    "validate.drift_warn_std": "0.001",
    "preprocess.epsilon": "0.5",
    "model.builder": f"{NETWORKS}:mlp",
    "model.options": (f"model.builder={NETWORKS}:mlp", 'model.options={{"hidden": [8]}}'),  # {{ }}: format()
    "model.conv_widths": "(4, 4)",
    "model.convs_per_block": "2",
    "model.padding": ("model.conv_widths=(4,)", "model.padding=valid"),  # two valid blocks leave 6x6 nothing
    "model.dense_units": "0",
    "model.dropout": "0.1",
    "model.batch_norm": "false",
    # A backbone's weights file (the builder a weights file needs first); its 32x32 minimum resizes the 6x6 images.
    "model.weights": ("model.builder=mobilenet_v3_small", "model.weights={weights_file}"),
    "model.init": "{workdir}/saved_models/probe",  # a warm start from the base run's own export
    "train.epochs": "2",
    "train.batch_size": "8",
    "train.learning_rate": "0.01",
    "train.warmup": "0.5",  # of 3 steps: 1.5 warm-up steps, where 0.05 (and 0.2) round up to 1
    "train.label_smoothing": "0.0",
    "train.augment": "none",
    "train.max_shift": "0.3",
    "train.patience": "0",
    "train.max_seconds": "60",
    "train.xla": "off",  # auto is off on a CPU: the same computation
    "train.precision": "mixed_bfloat16",
    "train.strategy": "mirrored",
    "train.in_memory_mb": "0",
    "train.shuffle_mb": "0.5",
    "train.seed": "1",
    "train.deterministic": "true",
    "train.profile_batches": "(1, 1)",
    "train.log_images": "1",
    "train.head_share": "0.5",
    "train.unfreeze_share": "0.5",
    "train.fine_tune_lr_scale": "0.5",
    "evaluate.batch_size": "256",  # (7 would sum the test loss in another order: other metrics in the last bits)
    "evaluate.min_accuracy": "0.01",
    "evaluate.max_p_value": "0.5",
    "evaluate.max_regression": "0.5",
    "evaluate.fail_if_not_blessed": "true",
    "export.model_name": "other_name",
    "export.parity_examples": "8",
    "export.parity_atol": "0.001",
    "export.onnx_opset": "18",
    "export.int8": "true",
    "export.int8_max_drop": "2.0",
    "export.calibration_examples": "8",
    "export.score_examples": "8",
    "export.measure_speed": "false",
    "export.push_to": "memory://cache-keys/models",  # fsspec's store in this process's memory
    "report.mistakes": "5",
    # A search of one trial: the config as given, so train learns the base run's weights with tune's values.
    "tune.max_seconds": ("tune.max_trials=1", "tune.max_seconds=30"),
    "tune.max_trials": ("tune.max_seconds=30", "tune.max_trials=1"),
    "tune.space": ("tune.max_seconds=30", "tune.max_trials=1", 'tune.space={{"model.dropout": [0.0, 0.5]}}'),
    "tune.pruner": ("tune.max_seconds=30", "tune.max_trials=1", "tune.pruner=none"),
}
# Changing what the model takes: export must refuse to publish it under the first model's name.
CHANGES_THE_KIND_OF_MODEL = {"data.class_names", "data.image_size", "data.channels", "model.weights"}

EVERY_STAGE = "ingest validate preprocess train evaluate export report"
FROM_TRAIN = "train evaluate export report"  # a model trained differently: tested, exported (version 2), reported
# The stages each probe reruns (any other comes from the cache). A stage reruns when the key is in its own
# config section, or when an input holds other content: ingest's splits (images, labels, class names, the shard
# layout), validate's schema and statistics (warnings included), preprocess's mean and std, train's weights,
# network and precision, evaluate's metrics and blessing. The report shows every setting that differs from its
# default (each probe changes one), so it reruns every time it runs.
RERUNS: dict[str, str] = {
    "data.source": EVERY_STAGE,
    "data.tfds_data_dir": "ingest report",  # a folder source reads no TFDS folder: the same splits
    "data.class_names": "ingest validate preprocess train evaluate export",  # export refuses; no report
    "data.download": "ingest report",  # a folder is not downloaded
    "data.val_fraction": EVERY_STAGE,
    "data.test_fraction": EVERY_STAGE,
    "data.max_train_examples": EVERY_STAGE,
    "data.seed": EVERY_STAGE,
    "data.image_size": "ingest validate preprocess train evaluate export",  # export refuses; no report
    "data.channels": "ingest validate preprocess train evaluate export",  # export refuses; no report
    "data.on_bad_file": "ingest report",  # no file is bad
    "data.shard_mb": "ingest report",  # the tiny splits stay one shard each
    "validate.imbalance_warn_ratio": "validate report",  # the classes are balanced: no new warning
    # Drift warnings are part of the statistics, which train and export read with the schema; train learns the
    # same weights from the same splits, so evaluate is reused.
    "validate.drift_warn_std": "validate train export report",
    "preprocess.epsilon": "preprocess " + FROM_TRAIN,
    "model.builder": FROM_TRAIN,
    "model.options": FROM_TRAIN,
    "model.conv_widths": FROM_TRAIN,
    "model.convs_per_block": FROM_TRAIN,
    "model.padding": FROM_TRAIN,
    "model.dense_units": FROM_TRAIN,
    "model.dropout": FROM_TRAIN,
    "model.batch_norm": FROM_TRAIN,
    "model.weights": "ingest validate preprocess train evaluate export",  # 32x32 images: export refuses; no report
    "model.init": FROM_TRAIN,  # training goes on from the exported weights
    "train.epochs": FROM_TRAIN,
    "train.batch_size": FROM_TRAIN,
    "train.learning_rate": FROM_TRAIN,
    "train.warmup": FROM_TRAIN,
    "train.label_smoothing": FROM_TRAIN,
    "train.augment": FROM_TRAIN,  # a folder source is shifted by default
    "train.max_shift": FROM_TRAIN,
    "train.in_memory_mb": FROM_TRAIN,  # streamed from the shards, the batches come in another order
    "train.deterministic": FROM_TRAIN,  # TensorFlow's deterministic kernels round differently in float32
    "train.seed": FROM_TRAIN,
    "train.precision": FROM_TRAIN,
    # Settings that change how training runs, not what it computes: train reruns and learns the same weights.
    "train.patience": "train report",  # one epoch: nothing to stop early
    "train.max_seconds": "train report",  # one epoch of 3 steps is well inside a minute
    "train.xla": "train report",
    "train.strategy": "train report",  # one CPU device: one replica, as without a strategy
    "train.shuffle_mb": "train report",  # the split is gathered in memory, not streamed
    "train.profile_batches": "train report",  # one step per call into TensorFlow instead of three
    "train.log_images": "train report",  # images for TensorBoard only
    # The two phases' settings: a network trained from random weights has one phase, which they do not change.
    "train.head_share": "train report",
    "train.unfreeze_share": "train report",
    "train.fine_tune_lr_scale": "train report",
    "evaluate.batch_size": "evaluate report",  # the test split is one batch either way: the same predictions
    "evaluate.min_accuracy": "evaluate export report",  # the blessing records the rules it applied
    "evaluate.max_p_value": "evaluate export report",
    "evaluate.max_regression": "evaluate export report",
    "evaluate.fail_if_not_blessed": "evaluate report",  # what the command does after a refusal: not in the blessing
    "export.model_name": "export report",
    "export.parity_examples": "export report",  # the same model: version 1 is kept, not published again
    "export.parity_atol": "export report",
    "export.onnx_opset": "export report",  # another ONNX file: published as version 2
    # Other files, or other records of them in metadata.json: published as version 2
    "export.int8": "export report",
    "export.int8_max_drop": "export report",
    "export.calibration_examples": "export report",
    "export.score_examples": "export report",
    "export.measure_speed": "export report",
    "export.push_to": "push report",  # push is on; export reads nothing of it (Stage.unkeyed)
    "report.mistakes": "report",
    # The search's one trial is the config as given: train reruns (its input, tune's values, is new) and learns
    # the same weights; the report shows the search.
    "tune.max_seconds": "tune train report",
    "tune.max_trials": "tune train report",
    "tune.space": "tune train report",
    "tune.pruner": "tune train report",
}


def test_every_key_has_a_probe():
    assert set(PROBES) == set(valid_keys()), "give the new key a probe value in PROBES"
    assert set(RERUNS) == set(PROBES), "say in RERUNS which stages the new key's probe reruns"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache_keys")
    write_image_folder(root / "images", *make_images(24))
    write_image_folder(root / "other", *make_images(24, seed=5))
    import keras

    keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), include_top=False, weights=None).save_weights(
        root / "backbone.weights.h5")
    return root


@pytest.fixture(scope="module")
def base(folders):
    """The finished first run every probe starts from: its workdir, manifest and what each stage wrote."""
    workdir = folders / "base"
    manifest = _run(workdir, _overrides(folders))
    assert manifest["status"] == "succeeded" and manifest["results"]["blessed"]
    return workdir, manifest, {stage: _outputs(Path(manifest["run_dir"]) / stage) for stage in manifest["artifacts"]}


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(PROBES))
def test_a_changed_key_reruns_exactly_the_stages_it_reaches(key, folders, base, tmp_path):
    base_workdir, _, base_outputs = base
    workdir = tmp_path / "work"
    shutil.copytree(base_workdir, workdir, symlinks=True)
    probe = PROBES[key] if isinstance(PROBES[key], tuple) else (f"{key}={PROBES[key]}",)
    overrides = [*_overrides(folders), *(override.format(other_folder=folders / "other", workdir=workdir,
                                                         weights_file=folders / "backbone.weights.h5")
                                         for override in probe)]
    manifest = _run_probe(key, workdir, overrides)
    statuses = {record["name"]: record["status"] for record in manifest["stages"]}
    assert list(statuses) == [stage.name for stage in STAGES if stage.name not in ("push", "report") or
                              key not in CHANGES_THE_KIND_OF_MODEL]
    # What ran: succeeded, or failed (export refusing a model of another kind); tune, off, is skipped, not cached.
    ran = {name for name, status in statuses.items() if status not in ("cached", "skipped")}
    assert ran == set(RERUNS[key].split()), statuses
    _check_cached_stages_read_what_they_read_before(key, statuses, Path(manifest["run_dir"]), base_outputs)
    version_dir = Path("saved_models", "probe", "1")  # what the base run published
    changed = _differences(_outputs(base_workdir / version_dir), _outputs(workdir / version_dir))
    assert not changed, f"{key}: the published {version_dir}'s {changed} changed"


def _run_probe(key: str, workdir: Path, overrides: list[str]) -> dict:
    """The probe's manifest; a probe changing the kind of model must be refused the first model's name."""
    # The probes run in this process, one after another: train leaves op determinism as it found it
    # (tests/test_train.py), so the probes after train.deterministic=true train as the base run did.
    if key not in CHANGES_THE_KIND_OF_MODEL:
        return _run(workdir, overrides)
    with pytest.raises(UserError, match="set export.model_name to another name"):
        _run(workdir, overrides)
    return _newest_manifest(workdir)


def _check_cached_stages_read_what_they_read_before(key: str, statuses: dict[str, str], run_dir: Path,
                                                    base_outputs: dict[str, dict[str, Any]]) -> None:
    """Every input of a stage that came from the cache holds what it held in the base run, file by file."""
    for stage in STAGES:
        if statuses.get(stage.name) == "cached":
            for name in (name for name in stage.inputs.values() if name in base_outputs):  # not a skipped stage
                changed = _differences(base_outputs[name], _outputs(run_dir / name))
                assert not changed, f"{key}: stage {stage.name} was cached but {name}'s {changed} changed: stale"


def _outputs(folder: Path) -> dict[str, Any]:
    """Every file under `folder` (a stage's output in the cache, or an exported version), by relative path."""
    folder = folder.resolve()  # a run's stage folders are links into the cache
    return {str(path.relative_to(folder)): _comparable(path) for path in sorted(folder.rglob("*")) if path.is_file()}


def _comparable(path: Path) -> Any:
    """What a file holds, as bytes, except for the few files that a rerun computing the same writes differently."""
    if path.name == "model.keras":
        # Keras names layers by a counter of the process (conv2d, then conv2d_6), and saves object ids and
        # the time: two saves of the same weights differ in bytes. The weights are compared, in order.
        import keras

        model = keras.models.load_model(path, compile=False)
        return [hashlib.sha256(np.ascontiguousarray(weights).tobytes()).hexdigest() for weights in model.get_weights()]
    if path.name == "training.json":
        # How long training took and how fast it went, measured anew by every run.
        timings = {"seconds", "images_per_second", "gflops_per_second"}
        return {key: value for key, value in json.loads(path.read_text()).items() if key not in timings}
    if path.name == "history.json":
        # Per-epoch sums over the steps: train.profile_batches changes how many steps each call into TensorFlow
        # adds up, and so the rounding of the sums (read only by the report, which reruns for every probe).
        return _Close(json.loads(path.read_text()))
    if path.name == "artifact.json" and path.parent.parent.name == "train":
        # Which strategy train.strategy resolved to (one replica either way here), for the summary and the report.
        artifact = json.loads(path.read_text())
        return {**artifact, "fields": {k: v for k, v in artifact["fields"].items() if k != "strategy"}}
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Close:
    """Lists of numbers by name, equal to another's when every number is within a relative 1e-5 of its own."""

    def __init__(self, values: dict[str, list[float]]):
        self.values = values

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Close) and self.values.keys() == other.values.keys() and all(
            len(values) == len(other.values[name]) and np.allclose(values, other.values[name], rtol=1e-5, atol=0)
            for name, values in self.values.items())


def _differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The files present in only one of two outputs or holding different content."""
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))


def _overrides(folders: Path) -> list[str]:
    return [f"data.source=folder:{folders / 'images'}", "export.model_name=probe", *BASE]


def _run(workdir: Path, overrides: list[str]) -> dict:
    from pipeline.orchestrator import execute_pipeline

    return execute_pipeline(resolve("default", overrides), workdir)


def _newest_manifest(workdir: Path) -> dict:
    run_dir = max((workdir / "runs").iterdir(), key=lambda path: path.name)
    return json.loads((run_dir / "manifest.json").read_text())
