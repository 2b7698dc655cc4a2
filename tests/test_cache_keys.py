"""Every config key, changed one at a time: which stages rerun must follow from what each stage reads.

For each key the same finished workdir is copied and run again with that key changed. A stage must
rerun exactly when the change reaches what it reads: a config section of its own, an input artifact
whose content changed, or outside state it depends on (the registry says which). Independently of
the fingerprints, every stage that came from the cache is checked to have read the same content as
in the first run: a stale result fails here whatever the fingerprints claim.

A new config key fails `test_every_key_has_a_probe` until it is given a value here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from components.errors import UserError
from pipeline.config import resolve, valid_keys
from pipeline.registry import STAGES
from tests.conftest import REPO_DIR, make_images, read_split, write_image_folder

# evaluate.max_p_value=1: one epoch of a tiny network need not beat chance, and the base run must be exported.
BASE = ("train.epochs=1", "train.batch_size=16",
        "train.profile_batches=()", "train.log_images=2", "export.parity_examples=16", "evaluate.max_p_value=1")
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
    "train.epochs": "2",
    "train.batch_size": "8",
    "train.learning_rate": "0.01",
    "train.warmup": "0.2",
    "train.label_smoothing": "0.0",
    "train.augment": "none",
    "train.max_shift": "0.3",
    "train.patience": "0",
    "train.max_seconds": "60",
    "train.xla": "on",
    "train.precision": "mixed_bfloat16",
    "train.strategy": "mirrored",
    "train.in_memory_mb": "0",
    "train.shuffle_mb": "0.5",
    "train.seed": "1",
    "train.deterministic": "true",
    "train.profile_batches": "(1, 1)",
    "train.log_images": "1",
    "evaluate.batch_size": "7",
    "evaluate.min_accuracy": "0.01",
    "evaluate.max_p_value": "0.5",
    "evaluate.max_regression": "0.5",
    "evaluate.fail_if_not_blessed": "true",
    "export.model_name": "other_name",
    "export.parity_examples": "8",
    "export.parity_atol": "0.001",
    "export.onnx_opset": "18",
    "report.mistakes": "5",
    "report.measure_latency": "false",
}
# Changing what the model takes: export must refuse to publish it under the first model's name.
CHANGES_THE_KIND_OF_MODEL = {"data.class_names", "data.image_size", "data.channels"}


def test_every_key_has_a_probe():
    assert set(PROBES) == set(valid_keys()), "give the new key a probe value in PROBES"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache_keys")
    write_image_folder(root / "images", *make_images(24))
    write_image_folder(root / "other", *make_images(24, seed=5))
    return root


@pytest.fixture(scope="module")
def base(folders):
    """The finished first run every probe starts from: its workdir and manifest."""
    workdir = folders / "base"
    manifest = _run(workdir, _overrides(folders))
    assert manifest["status"] == "succeeded" and manifest["results"]["blessed"]
    return workdir, manifest


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(PROBES))
def test_a_changed_key_reruns_exactly_the_stages_it_reaches(key, folders, base, tmp_path):
    base_workdir, base_manifest = base
    workdir = tmp_path / "work"
    shutil.copytree(base_workdir, workdir, symlinks=True)
    probe = PROBES[key] if isinstance(PROBES[key], tuple) else (f"{key}={PROBES[key]}",)
    overrides = [*_overrides(folders), *(override.format(other_folder=folders / "other") for override in probe)]
    if key in CHANGES_THE_KIND_OF_MODEL:
        with pytest.raises(UserError, match="set export.model_name to another name"):
            _run(workdir, overrides)
        manifest = _newest_manifest(workdir)
    else:
        manifest = _run(workdir, overrides)
    _check_reruns_follow_reads(key, _moved(base_manifest, base_workdir, workdir), manifest)


def _check_reruns_follow_reads(key: str, before: dict, after: dict) -> None:
    records = {record["name"]: record for record in after["stages"]}
    old = {record["name"]: record for record in before["stages"]}
    section = key.partition(".")[0]
    for stage in STAGES:
        record = records.get(stage.name)
        if record is None or record["status"] == "skipped":
            continue
        reads_section = section in {cls.name for cls in stage.config.values()}
        inputs_changed = record["inputs"] != old[stage.name]["inputs"]
        outside_changed = record["outside"] != old[stage.name]["outside"]
        expected = "rerun" if reads_section or inputs_changed or outside_changed else "cached"
        actual = "cached" if record["status"] == "cached" else "rerun"
        assert actual == expected, (f"{key}: stage {stage.name} {actual}, expected {expected} (reads section: "
                                    f"{reads_section}, inputs changed: {inputs_changed}, outside: {outside_changed})")
        if actual == "cached":
            for name in stage.inputs.values():
                assert _content(name, after["artifacts"][name]) == _content(name, before["artifacts"][name]), \
                    f"{key}: stage {stage.name} was cached but {name}'s content changed: stale"


def _content(stage: str, artifact: dict) -> str:
    """A hash of what an artifact holds, read from its files, not from the fingerprint it claims."""
    digest = hashlib.sha256()
    if stage == "ingest":
        digest.update(json.dumps(artifact["class_names"]).encode())
        for split in ("train", "val", "test"):
            images, labels = read_split(Path(artifact["splits_dir"]), split)
            digest.update(images.tobytes() + labels.tobytes() + json.dumps(list(images.shape)).encode())
    elif stage == "train":
        import keras

        model = keras.models.load_model(artifact["model_path"], compile=False)
        for weights in model.get_weights():
            digest.update(np.ascontiguousarray(weights).tobytes())
        digest.update(artifact["precision"].encode())
    else:
        for value in artifact.values():
            if isinstance(value, str) and value.endswith(".json") and Path(value).is_file():
                digest.update(Path(value).read_bytes())
        digest.update(json.dumps({k: v for k, v in artifact.items() if not str(v).startswith("/")},
                                 sort_keys=True).encode())
    return digest.hexdigest()


def _moved(manifest: dict, old_workdir: Path, new_workdir: Path) -> dict:
    """The base manifest with its paths pointing into the probe's copy of the workdir."""
    return json.loads(json.dumps(manifest).replace(str(old_workdir.resolve()), str(new_workdir.resolve())))


def _overrides(folders: Path) -> list[str]:
    return [f"data.source=folder:{folders / 'images'}", "export.model_name=probe", *BASE]


def _run(workdir: Path, overrides: list[str]) -> dict:
    from pipeline.orchestrator import execute_pipeline

    return execute_pipeline(resolve("default", overrides), workdir)


def _newest_manifest(workdir: Path) -> dict:
    run_dir = max((workdir / "runs").iterdir(), key=lambda path: path.name)
    return json.loads((run_dir / "manifest.json").read_text())
