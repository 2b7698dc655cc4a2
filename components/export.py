"""Export: a whole TF Serving version folder with a SavedModel, an ONNX model, a LiteRT model (and, with
`export.int8=true`, their int8 twins), labels and metadata.

The version is written into a hidden temporary folder, checked for parity (Keras, the reloaded
SavedModel, ONNX Runtime and LiteRT must agree), every file scored (size, test accuracy, agreement with
Keras, speed; an int8 file that loses too much accuracy is left out), and only then renamed to its
number, so a version folder is either complete or absent. Its model card (`model_card.md`) names the
version, so it is written last, for the number the folder is renamed to.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import onnx
import tensorflow as tf

from components.artifacts import ExportedModel, Metrics, SchemaAndStatistics, Splits, TrainedModel
from components.atomic import locked, make_readable_by_all, new_hidden_dir, remove_abandoned
from components.config import ExportConfig
from components.converters import write_onnx_int8, write_tflite, write_tflite_int8
from components.errors import UserError, first_line
from components.file_scores import SCORING_BATCH, FileScore, int8_refusal, score_files, scored_indices
from components.loaded_model import file_runner
from components.model import OUTPUT_NAME, load_trained
from components.model_card import ModelCard, write_model_card
from components.model_files import BACKENDS, FLOAT_TWIN, model_file
from components.onnx_session import onnx_session
from components.saved_models import METADATA_FILE, ModelKind, kind_of, numbered_entries, read_metadata, version_dirs
from components.shards.layout import split_labels
from components.shards.record_reader import read_images_at
from components.shards.tf_reader import load_split

log = logging.getLogger(__name__)

INPUT_NAME = "pixels"


class ParityError(RuntimeError):
    """The exported formats disagree with the Keras model: a bug, not a user's mistake."""


def export(config: ExportConfig, trained: TrainedModel, splits: Splits, schema: SchemaAndStatistics, metrics: Metrics,
           saved_models_dir: Path, run_id: str, out_dir: Path, command: str = "",
           reproduction: dict[str, Any] | None = None) -> ExportedModel:
    """Write `saved_models_dir/<model_name>/<version>/` and return it.

    Args:
        config: the `export` section.
        trained: train's output; exported as a float32 twin whatever precision it trained in.
        splits: ingest's output; test images feed the parity check, the fingerprint goes in metadata.
        schema: validate's output; gives the input spec.
        metrics: evaluate's output, recorded in metadata; its files feed the model card.
        saved_models_dir: the root of the TF Serving layout.
        run_id: recorded in metadata and the model card.
        out_dir: the run's export folder; `export.json` there points at the version.
        command: the run's command line, for the model card's "How to reproduce"; "" = not recorded.
        reproduction: seeds, packages, git commit and devices (`pipeline/reproduction.py`'s record) for
            the model card; None = not recorded.

    Raises:
        UserError: the newest version under this name takes other images or predicts other classes.
        ParityError: Keras, SavedModel, ONNX Runtime and LiteRT disagree beyond `config.parity_atol`.
    """
    model_dir = saved_models_dir / config.model_name
    check_same_kind(model_dir, ModelKind(schema.image_shape, splits.class_names))
    published = _already_published(model_dir, trained, splits, config)
    if published is not None:
        log.info("export: %s already holds this model; not published again", published.version_dir)
        return _record(published, out_dir)
    model = load_trained(trained.network_path, trained.model_path)
    model_dir.mkdir(parents=True, exist_ok=True)
    remove_abandoned(model_dir, "staging")
    staging_dir = new_hidden_dir(model_dir, "staging")
    try:
        write_saved_model(model, schema.image_shape, staging_dir)
        write_onnx(model, schema.image_shape, staging_dir / "model.onnx", config.onnx_opset)
        left_out: dict[str, str] = {}  # file name -> why it is not in the version
        write_or_leave_out("litert", staging_dir, lambda path: write_tflite(staging_dir, path), left_out)
        (staging_dir / "labels.txt").write_text("\n".join(splits.class_names) + "\n")
        write_warm_start_files(model, trained, staging_dir)
        images = load_split(splits, "test", limit=config.parity_examples)[0]
        max_diff = check_parity(model, staging_dir, images, config.parity_atol)
        if config.int8:
            write_int8_files(splits, staging_dir, config.calibration_examples, left_out)
        scores = score_and_gate(config, model, splits, staging_dir, left_out)
        int8 = {"max_drop_points": config.int8_max_drop,
                "calibration_examples": min(config.calibration_examples, splits.num_examples["train"])} \
            if config.int8 else None
        _write_metadata(staging_dir, run_id, splits, schema, metrics, trained, max_diff, config, scores, int8,
                        left_out)
        card = _model_card(config, model, splits, schema, metrics, trained, max_diff, len(images), run_id,
                           command, reproduction, scores, int8, left_out)
        with locked(model_dir):  # another run may have published another kind of model meanwhile
            check_same_kind(model_dir, ModelKind(schema.image_shape, splits.class_names))
            version_dir = _publish(staging_dir, model_dir,
                                   lambda version: write_model_card(staging_dir, card, version))
    except BaseException:
        shutil.rmtree(staging_dir, ignore_errors=True)
        raise
    log.info("export: %s (parity max |diff| %.2e)", version_dir, max_diff)
    return _record(ExportedModel(version_dir, int(version_dir.name), version_dir / "model.onnx", max_diff), out_dir)


def _already_published(model_dir: Path, trained: TrainedModel, splits: Splits,
                       config: ExportConfig) -> ExportedModel | None:
    """The newest version, if it holds these weights trained on this data, exported with these settings.

    A rerun that changes nothing in the model (a code edit, a killed run resumed after its rename)
    then points at it instead of publishing the same model again under a new number.
    """
    newest = version_dirs(model_dir)[-1:]
    if not newest:
        return None
    metadata = read_metadata(newest[0])
    same = (metadata.get("weights_sha256"), metadata.get("data_fingerprint"), metadata.get("export_settings"),
            metadata.get("exported_with")) == (trained.weights_sha256, splits.data_sha256,
                                               export_settings(config, splits), exporter_versions())
    return ExportedModel(newest[0], int(newest[0].name), newest[0] / "model.onnx",
                         metadata["parity_max_abs_diff"]) if same else None


def exporter_versions() -> dict[str, str]:
    """The versions of the libraries that write the files (TensorFlow also converts to LiteRT, ONNX Runtime
    quantizes the ONNX model) and run them while export scores them."""
    return {name: importlib.metadata.version(name)
            for name in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert")}


def export_settings(config: ExportConfig, splits: Splits) -> dict[str, Any]:
    """The settings that shape a version's files or what its metadata records of them, as they take effect
    on these splits: a version exported with others is not this export. (Its name and the parity check's
    settings are not among them; nor are the int8 settings without export.int8, nor counts past a split's.)"""
    settings = {"onnx_opset": config.onnx_opset, "int8": config.int8, "measure_speed": config.measure_speed,
                "score_examples": min(config.score_examples, splits.num_examples["test"])}
    if config.int8:
        settings.update(int8_max_drop=config.int8_max_drop,
                        calibration_examples=min(config.calibration_examples, splits.num_examples["train"]))
    return settings


def _record(exported: ExportedModel, out_dir: Path) -> ExportedModel:
    """Write `export.json`, the run's pointer to its version folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "export.json").write_text(json.dumps(dataclasses.asdict(exported), indent=2, default=str))
    return exported


def check_same_kind(model_dir: Path, kind: ModelKind) -> None:
    """Refuse to publish under a name whose newest version takes other images or predicts other classes
    (see `ModelKind`)."""
    if model_dir.exists() and not model_dir.is_dir():
        raise UserError(f"{model_dir} is a file, not a model folder; move it, or set export.model_name to "
                        "another name")
    versions = version_dirs(model_dir)
    if versions and (theirs := kind_of(versions[-1])) != kind:
        raise UserError(f"saved_models/{model_dir.name}/{versions[-1].name} takes {theirs.describe()}, this model "
                        f"takes {kind.describe()}; set export.model_name to another name to publish it beside "
                        "that model")


def write_warm_start_files(model: keras.Model, trained: TrainedModel, version_dir: Path) -> None:
    """What a later run's `model.init` trains on: how to rebuild the network, and its float32 weights."""
    shutil.copyfile(trained.network_path, version_dir / "network.json")
    model.save_weights(version_dir / "model.weights.h5")


def write_saved_model(model: keras.Model, image_shape: tuple[int, int, int], path: Path) -> None:
    """SavedModel whose `serving_default` takes float32 pixels and `serving_uint8` takes uint8 pixels.

    Both return `{"probabilities": [batch, num_classes]}` from raw 0..255 pixel values.
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, dtype in (("serving_default", tf.float32), ("serving_uint8", tf.uint8)):
        archive.add_endpoint(
            name,
            lambda pixels: {OUTPUT_NAME: model(tf.cast(pixels, tf.float32), training=False)},
            input_signature=[tf.TensorSpec([None, *image_shape], dtype, name=INPUT_NAME)],
        )
    archive.write_out(str(path), verbose=False)


def write_onnx(model: keras.Model, image_shape: tuple[int, int, int], path: Path, opset: int) -> None:
    """ONNX model with input `pixels` (float32, raw 0..255) and output `probabilities`."""
    spec = [tf.TensorSpec([None, *image_shape], tf.float32, name=INPUT_NAME)]
    model.export(str(path), format="onnx", input_signature=spec, opset_version=opset, verbose=False)
    proto = onnx.load(str(path))
    old_name = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = [OUTPUT_NAME if name == old_name else name for name in node.output]
    proto.graph.output[0].name = OUTPUT_NAME
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def check_parity(model: keras.Model, version_dir: Path, images: np.ndarray, atol: float) -> float:
    """Largest |difference| between Keras and each exported path (float32 and uint8 signatures, ONNX, LiteRT).

    The predicted class must match too, except on near-ties: images whose two most likely classes
    are within `atol` of each other, where rounding alone may flip the order.

    Raises:
        ParityError: a difference above `atol`, or another predicted class on an image that is no near-tie.
    """
    expected = model.predict(images.astype(np.float32), verbose=0)
    max_diff = 0.0
    for name, actual in exported_predictions(version_dir, images).items():
        max_diff = max(max_diff, compare(name, expected, actual, atol))
    return max_diff


def exported_predictions(version_dir: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """Probabilities for `images` (uint8) from each way a consumer can load the version's float files."""
    pixels = images.astype(np.float32)
    signatures = tf.saved_model.load(str(version_dir)).signatures
    session = onnx_session(version_dir / "model.onnx", batch_hint=len(images))
    predictions = {
        "SavedModel serving_default": signatures["serving_default"](**{INPUT_NAME: tf.constant(pixels)}),
        "SavedModel serving_uint8": signatures["serving_uint8"](**{INPUT_NAME: tf.constant(images.astype(np.uint8))}),
        "ONNX Runtime": {OUTPUT_NAME: session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]},
    }
    if model_file("litert").path(version_dir).is_file():  # absent only when its conversion failed (left_out)
        num_classes = int(session.get_outputs()[0].shape[1])
        litert = file_runner(version_dir, "litert", INPUT_NAME, OUTPUT_NAME, num_classes, batch_hint=len(images))
        predictions["LiteRT"] = {OUTPUT_NAME: litert(pixels)}
    return predictions


def write_or_leave_out(backend: str, version_dir: Path, write: Callable[[Path], None],
                       left_out: dict[str, str]) -> None:
    """`write(path)` the backend's file; a conversion that fails leaves the file out, the reason in `left_out`,
    instead of failing the export: a network LiteRT cannot convert still gets its SavedModel and ONNX model."""
    path = model_file(backend).path(version_dir)
    try:
        write(path)
    except Exception as error:  # noqa: BLE001 - each converter raises its own types (TensorFlow's, ONNX Runtime's)
        path.unlink(missing_ok=True)
        left_out[path.name] = f"its conversion failed: {type(error).__name__}: {first_line(error)[:300]}"
        log.warning("export: %s left out: %s", path.name, left_out[path.name])


def write_int8_files(splits: Splits, version_dir: Path, num_calibration: int, left_out: dict[str, str]) -> None:
    """`model_int8.tflite` and `model_int8.onnx`, calibrated on the first `num_calibration` training images
    (train is stored in a seeded random order: a random sample, the same one on every run)."""
    calibration = load_split(splits, "train", limit=num_calibration)[0]
    write_or_leave_out("litert-int8", version_dir,
                       lambda path: write_tflite_int8(version_dir, path, calibration, INPUT_NAME), left_out)
    write_or_leave_out("onnx-int8", version_dir,
                       lambda path: write_onnx_int8(model_file("onnx").path(version_dir), path, calibration,
                                                    INPUT_NAME), left_out)


def score_and_gate(config: ExportConfig, model: keras.Model, splits: Splits, version_dir: Path,
                   left_out: dict[str, str]) -> dict[str, FileScore]:
    """Score every file of the version on `config.score_examples` test images spread over the split, read
    256 at a time, and remove each int8 file that loses more than `config.int8_max_drop` points against its
    float twin (the reason goes into `left_out`).

    Returns:
        The scores of the files kept, by backend.
    """
    indices = scored_indices(splits.num_examples["test"], config.score_examples)
    labels = split_labels(splits, "test")[indices]
    batches = ((read_images_at(splits, "test", indices[start:start + SCORING_BATCH]),
                labels[start:start + SCORING_BATCH]) for start in range(0, len(indices), SCORING_BATCH))
    num_classes = len(splits.class_names)
    scores = score_files(version_dir, [each for each in BACKENDS if model_file(each).path(version_dir).is_file()],
                         lambda backend, hint: file_runner(version_dir, backend, INPUT_NAME, OUTPUT_NAME,
                                                           num_classes, hint),
                         batches, lambda pixels: np.asarray(model.predict_on_batch(pixels)).argmax(1),
                         config.measure_speed)
    for backend, twin in FLOAT_TWIN.items():
        if backend not in scores:
            continue
        reason = int8_refusal(scores, backend, config.int8_max_drop) if twin in scores else \
            f"its float twin {model_file(twin).file_name} was left out, so its loss cannot be measured"
        if reason:
            model_file(backend).path(version_dir).unlink()
            left_out[model_file(backend).file_name] = reason
            del scores[backend]
            log.warning("export: %s left out: %s", model_file(backend).file_name, reason)
    return scores


def compare(name: str, expected: np.ndarray, actual: Any, atol: float) -> float:
    """Max |actual - expected|; raises ParityError beyond `atol` or on another class outside near-ties."""
    actual = np.asarray(actual[OUTPUT_NAME])
    diff = float(np.abs(actual - expected).max())
    top_two = np.sort(expected, axis=1)[:, -2:]
    decisive = (top_two[:, 1] - top_two[:, 0]) > atol
    flipped = int(np.sum((actual.argmax(1) != expected.argmax(1)) & decisive))
    if diff > atol or flipped:
        raise ParityError(f"{name} disagrees with the Keras model on {len(expected)} test images "
                          f"(max |diff| {diff:.2e}, allowed {atol:.0e}; {flipped} other predicted classes)")
    return diff


def _write_metadata(version_dir: Path, run_id: str, splits: Splits, schema: SchemaAndStatistics, metrics: Metrics,
                    trained: TrainedModel, parity_max_abs_diff: float, config: ExportConfig,
                    scores: dict[str, FileScore], int8: dict[str, Any] | None, left_out: dict[str, str]) -> None:
    metadata = {
        "run_id": run_id,
        "data_fingerprint": splits.fingerprint,
        "metrics": {"test_accuracy": metrics.test_accuracy, "test_loss": metrics.test_loss},
        "input": {"name": INPUT_NAME, "shape": [None, *schema.image_shape], "dtype": ["float32", "uint8"],
                  "range": [0, 255], "normalization": "inside the model"},
        "output": {"name": OUTPUT_NAME, "shape": [None, schema.num_classes]},
        "class_names": list(splits.class_names),
        "weights_sha256": trained.weights_sha256,
        "parent": trained.parent or None,  # the version model.init warm-started from, NAME/VERSION
        "trained_precision": trained.precision,
        "exported_precision": "float32",
        "parity_max_abs_diff": parity_max_abs_diff,
        "onnx_opset": config.onnx_opset,
        "files": {score.file_name: score.record() for score in scores.values()},  # what each scored, by file
        "left_out": left_out,  # files not published, each with why (a failed conversion, the int8 gate)
        "int8": int8,  # null: export.int8=false; else its gate
        "export_settings": export_settings(config, splits),
        "exported_with": exporter_versions(),
    }
    (version_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2))


def _model_card(config: ExportConfig, model: keras.Model, splits: Splits, schema: SchemaAndStatistics, metrics: Metrics,
                trained: TrainedModel, parity_max_abs_diff: float, num_parity_examples: int, run_id: str,
                command: str, reproduction: dict[str, Any] | None, scores: dict[str, FileScore],
                int8: dict[str, Any] | None, left_out: dict[str, str]) -> ModelCard:
    """What the model card says, gathered before the version number is known."""
    record = trained.record() if trained.training_path.is_file() else None
    return ModelCard(
        model_name=config.model_name,
        exported_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        run_id=run_id,
        image_shape=schema.image_shape,
        class_names=splits.class_names,
        num_parameters=model.count_params(),
        onnx_opset=config.onnx_opset,
        exported_with=exporter_versions(),
        trained_precision=trained.precision,
        parity_max_abs_diff=parity_max_abs_diff,
        num_parity_examples=num_parity_examples,
        num_examples=dict(splits.num_examples),
        data_fingerprint=splits.fingerprint,
        metrics=json.loads(metrics.metrics_path.read_text()),
        blessing=metrics.blessing(),
        data_warnings=schema.warnings,
        command=command,
        reproduction=reproduction,
        network=trained.network,
        starting_weights=record.starting_weights if record else "random",
        parent=trained.parent,
        trainable_parameters=record.trainable_parameters if record else 0,
        frozen_parameters=record.frozen_parameters if record else 0,
        files=tuple(scores.values()),
        int8=int8,
        left_out=left_out,
    )


def _publish(staging_dir: Path, model_dir: Path, write_card: Callable[[int], Any]) -> Path:
    """Rename the finished staging folder to the next free integer version, atomically.

    `write_card(version)` writes the model card, which names the version, into the staging folder just
    before each rename tried: a version appears with its card, and with no card naming another number.
    """
    while True:
        versions = numbered_entries(model_dir)
        version_dir = model_dir / str(int(versions[-1].name) + 1 if versions else 1)
        write_card(int(version_dir.name))
        make_readable_by_all(staging_dir)  # TF Serving often runs as another user
        try:
            os.rename(staging_dir, version_dir)  # fails if another process took this number first
            return version_dir
        except OSError:
            if not version_dir.exists():
                raise
