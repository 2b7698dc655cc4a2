"""The files of an export beside the SavedModel: LiteRT (`model.tflite`), the int8 twins and their gate, and
what export records of each (size, accuracy, agreement, speed) checked against the files themselves."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from ai_edge_litert.interpreter import Interpreter

from components.errors import UserError
from components.file_scores import FileScore, file_bytes, int8_refusal
from components.litert_runtime import litert_runner
from components.loaded_model import load_exported
from components.model_files import BACKENDS, FLOAT_TWIN, MODEL_FILES, model_file
from pipeline.cache import read_entry
from tests.conftest import read_split


@pytest.fixture(scope="module")
def version_dir(smoke_run) -> Path:
    return Path(smoke_run.manifest["results"]["version_dir"])


@pytest.fixture(scope="module")
def test_split(smoke_run) -> tuple[np.ndarray, np.ndarray]:
    return read_split(smoke_run.run_dir / "ingest")


@pytest.fixture(scope="module")
def probabilities(version_dir, test_split) -> dict[str, np.ndarray]:
    """Every backend's probabilities on the whole test split, through `load_exported` as consumers load it."""
    return {backend: load_exported(version_dir, backend, batch_hint=256).probabilities(test_split[0])
            for backend in BACKENDS}


def test_the_smoke_export_holds_every_file_and_records_exactly_those(version_dir):
    metadata = json.loads((version_dir / "metadata.json").read_text())
    present = {each.file_name for each in MODEL_FILES if each.path(version_dir).is_file()}
    assert present == {each.file_name for each in MODEL_FILES}, "the smoke run exports with export.int8=true"
    assert set(metadata["files"]) == present
    assert metadata["int8"] == {"max_drop_points": 2.0, "calibration_examples": 256} and metadata["left_out"] == {}
    for name, record in metadata["files"].items():
        assert record["bytes"] == file_bytes(version_dir, record["backend"]) > 0
        assert model_file(record["backend"]).file_name == name


def test_each_recorded_accuracy_and_agreement_is_what_the_file_scores(version_dir, test_split, probabilities):
    files = json.loads((version_dir / "metadata.json").read_text())["files"]
    labels = test_split[1]
    keras_classes = probabilities["savedmodel"].argmax(1)  # export's parity check holds it to Keras within 1e-4
    for backend, answers in probabilities.items():
        record = files[model_file(backend).file_name]
        assert record["num_images"] == len(labels)
        assert record["test_accuracy"] == pytest.approx(np.mean(answers.argmax(1) == labels), abs=1e-9)
        assert record["agreement"] == pytest.approx(np.mean(answers.argmax(1) == keras_classes), abs=1.5 / len(labels))
        speed = record["speed"]
        assert 0 < speed["batch_1_p50_ms"] <= speed["batch_1_p99_ms"] and speed["batch_256_images_per_second"] > 0


def test_float_files_give_keras_probabilities_and_int8_files_nearly_the_same_classes(probabilities):
    for backend in ("onnx", "litert"):
        np.testing.assert_allclose(probabilities[backend], probabilities["savedmodel"], atol=1e-4)
    for backend, twin in FLOAT_TWIN.items():
        assert not np.allclose(probabilities[backend], probabilities[twin], atol=1e-4), f"{backend}: not int8"
        assert np.mean(probabilities[backend].argmax(1) == probabilities[twin].argmax(1)) >= 0.95


def test_the_int8_files_hold_8_bit_weights_and_are_smaller(version_dir):
    tflite = Interpreter(model_path=str(version_dir / "model_int8.tflite"))
    types = [detail["dtype"] for detail in tflite.get_tensor_details()]
    assert types.count(np.int8) > types.count(np.float32)
    graph = onnx.load(version_dir / "model_int8.onnx").graph
    weights = [onnx.numpy_helper.to_array(tensor) for tensor in graph.initializer]
    int8, float32 = (sum(w.size for w in weights if w.dtype == dtype) for dtype in (np.int8, np.float32))
    assert int8 > 10 * float32
    for backend, twin in FLOAT_TWIN.items():  # the smoke network is tiny: names and scales weigh much beside it
        assert file_bytes(version_dir, backend) < 0.7 * file_bytes(version_dir, twin)


def test_the_litert_and_onnx_files_keep_the_input_and_output_names(version_dir):
    for name in ("model.tflite", "model_int8.tflite"):
        signatures = Interpreter(model_path=str(version_dir / name)).get_signature_list()
        assert signatures == {"serving_default": {"inputs": ["pixels"], "outputs": ["probabilities"]}}
    graph = onnx.load(version_dir / "model_int8.onnx").graph
    assert ([v.name for v in graph.input], [v.name for v in graph.output]) == (["pixels"], ["probabilities"])


def test_one_litert_runner_answers_threads_at_once_as_it_answers_one_at_a_time(version_dir, test_split):
    """An interpreter holds its tensors: without the runner's lock, threads resizing it corrupt each other's answers."""
    images = test_split[0][:64].astype(np.float32)
    run = litert_runner(version_dir / "model_int8.tflite", "pixels", "probabilities", 10, batch_hint=1)
    sizes = [1, 3, 8, 17, 64, 2, 5, 33]
    expected = {size: run(images[:size]) for size in sizes}
    failures = []

    def client(size: int) -> None:
        for _ in range(30):
            if not np.array_equal(run(images[:size]), expected[size]):
                failures.append(size)

    threads = [threading.Thread(target=client, args=(size,)) for size in sizes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


@pytest.mark.parametrize("twin_accuracy, int8_accuracy, refused", [
    (0.9900, 0.9850, False),  # 0.50 points: at the limit, kept
    (0.9900, 0.9849, True),
    (0.9000, 0.9500, False),  # better than its twin
])
def test_an_int8_file_may_lose_at_most_int8_max_drop_points(twin_accuracy, int8_accuracy, refused):
    def score(backend: str, accuracy: float) -> FileScore:
        return FileScore(backend, model_file(backend).file_name, "x", 1, 100, accuracy, 1.0, None)

    scores = {"litert": score("litert", twin_accuracy), "litert-int8": score("litert-int8", int8_accuracy)}
    reason = int8_refusal(scores, "litert-int8", 0.5)
    assert bool(reason) == refused
    if refused:
        assert "0.9849 against 0.9900 for model.tflite: 0.51 points lost, more than export.int8_max_drop=0.5" in reason


def test_files_that_fail_to_convert_or_lose_accuracy_are_left_out_and_every_record_says_why(smoke_run, tmp_path,
                                                                                             monkeypatch):
    """LiteRT's float conversion fails (a network it cannot convert); the ONNX int8 file is calibrated on black
    images and loses most of its accuracy; the LiteRT int8 file converts but has no float twin to be measured
    against. Export must publish the rest, and the metadata, the manifest's facts, the summary, the model
    card and a consumer asking for a missing file must say why each is missing."""
    import components.export as export_module
    from components.config import ExportConfig

    def conversion_fails(saved_model_dir, path):
        raise RuntimeError("op FancyOp is neither a custom op nor a flex op\nmore lines")

    def onnx_calibrated_on_black_images(onnx_path, path, calibration, input_name):
        real_write_onnx_int8(onnx_path, path, np.zeros_like(calibration), input_name)

    real_write_onnx_int8 = export_module.write_onnx_int8
    monkeypatch.setattr(export_module, "write_tflite", conversion_fails)
    monkeypatch.setattr(export_module, "write_onnx_int8", onnx_calibrated_on_black_images)
    artifacts = {name: read_entry((smoke_run.run_dir / name).resolve())
                 for name in ("ingest", "validate", "train", "evaluate")}
    config = ExportConfig(model_name="partial", int8=True, measure_speed=False)
    exported = export_module.export(config, artifacts["train"], artifacts["ingest"], artifacts["validate"],
                                    artifacts["evaluate"], tmp_path / "saved_models", "run-x", tmp_path / "out")
    version_dir = exported.version_dir
    metadata = json.loads((version_dir / "metadata.json").read_text())
    left_out = metadata["left_out"]
    expected = {"model.tflite": "its conversion failed: RuntimeError: op FancyOp is neither a custom op nor a flex op",
                "model_int8.tflite": "its float twin model.tflite was left out, so its loss cannot be measured",
                "model_int8.onnx": "points lost, more than export.int8_max_drop=0.5"}
    assert set(left_out) == set(expected) and all(expected[name] in left_out[name] for name in expected)
    assert not any((version_dir / name).exists() for name in left_out)
    assert set(metadata["files"]) == {"model.onnx", "saved_model.pb"}
    assert exported.facts()["left_out"] == left_out
    assert f"left out     model_int8.onnx: {left_out['model_int8.onnx']}" in exported.summary()
    card = (version_dir / "model_card.md").read_text()
    assert "**`model_int8.onnx` left out:** test accuracy" in card and "| `model_int8.onnx` |" not in card
    assert "**`model.tflite` left out:** its conversion failed" in card and "LiteRT" not in card
    for backend in ("litert", *FLOAT_TWIN):
        with pytest.raises(UserError, match=f"has no {model_file(backend).file_name} .export left it out: "):
            load_exported(version_dir, backend)
    images = read_split(smoke_run.run_dir / "ingest", limit=2)[0]
    assert load_exported(version_dir, "onnx").probabilities(images).shape == (2, 10)


def test_a_version_exported_without_int8_says_how_to_get_the_file(version_dir, tmp_path):
    copy = tmp_path / "digits" / "1"
    shutil.copytree(version_dir, copy)
    metadata = json.loads((copy / "metadata.json").read_text())
    (copy / "metadata.json").write_text(json.dumps({**metadata, "int8": None}))
    (copy / "model_int8.onnx").unlink()
    with pytest.raises(UserError, match=r"has no model_int8.onnx \(exported without export.int8=true\); choose "
                                        r"another backend: onnx, savedmodel, litert, litert-int8$"):
        load_exported(copy, "onnx-int8")


def test_a_version_exported_with_other_file_settings_is_not_this_export(smoke_run, version_dir):
    from components.config import ExportConfig
    from components.export import _already_published, export_settings

    train, ingest = (read_entry((smoke_run.run_dir / name).resolve()) for name in ("train", "ingest"))
    smoke = ExportConfig(int8=True, int8_max_drop=2.0)
    assert _already_published(version_dir.parent, train, ingest, smoke) is not None
    changed = {"onnx_opset": 18, "int8": False, "int8_max_drop": 0.5, "calibration_examples": 8, "score_examples": 8,
               "measure_speed": False}
    assert set(changed) == set(export_settings(smoke, ingest))  # every setting export compares
    model_dir = version_dir.parent
    for name, value in changed.items():
        assert _already_published(model_dir, train, ingest, dataclasses.replace(smoke, **{name: value})) is None, name
    assert _already_published(model_dir, train, ingest, dataclasses.replace(smoke, parity_examples=8)) is not None


def test_settings_that_change_nothing_here_do_not_make_another_export():
    from types import SimpleNamespace

    from components.config import ExportConfig
    from components.export import export_settings

    splits = SimpleNamespace(num_examples={"train": 1000, "test": 300})
    same = [(ExportConfig(), ExportConfig(int8_max_drop=3.0, calibration_examples=8)),  # int8 off: unused
            (ExportConfig(score_examples=300), ExportConfig(score_examples=100_000)),  # both score the whole split
            (ExportConfig(int8=True, calibration_examples=1000), ExportConfig(int8=True, calibration_examples=5000))]
    for first, second in same:
        assert export_settings(first, splits) == export_settings(second, splits)
    assert export_settings(ExportConfig(int8=True), splits) != export_settings(ExportConfig(int8=True,
                                                                                            int8_max_drop=3.0), splits)


def test_scored_images_are_spread_over_the_split_which_a_folder_stores_class_by_class():
    from components.file_scores import scored_indices

    assert scored_indices(5, 10).tolist() == [0, 1, 2, 3, 4]
    spread = scored_indices(10_000, 100)
    assert len(spread) == 100 and spread[0] == 0 and spread[-1] == 9_999
    assert np.all(np.diff(spread) >= 100) and np.all(np.diff(spread) <= 102)


def test_a_model_folder_whose_newest_version_lacks_the_file_is_refused_not_answered_by_an_older_one(
        version_dir, tmp_path):
    from pipeline.serving.errors import NotFound
    from pipeline.serving.models import ModelRepository

    model_dir = tmp_path / "saved_models" / "digits"
    shutil.copytree(version_dir, model_dir / "1")
    shutil.copytree(version_dir, model_dir / "2")
    (model_dir / "2" / "model_int8.tflite").unlink()
    with pytest.raises(UserError, match=r"/2 has no model_int8.tflite"):
        load_exported(model_dir, "litert-int8")
    assert load_exported(model_dir, "litert").version == 2
    # The server keeps serving what it can (TF Serving's way), and says why a model it cannot serve is missing
    served = ModelRepository(tmp_path / "saved_models", "litert-int8")
    served.refresh()
    assert list(served.model("digits").versions) == [1]
    shutil.rmtree(model_dir / "1")
    served.refresh()
    with pytest.raises(NotFound, match=r"^model 'digits' is not being served: .*/2 has no model_int8.tflite \("):
        served.model("digits")


@pytest.mark.parametrize("backend, swapped_in", [("litert", "litert-int8"), ("onnx", "onnx-int8"),
                                                 ("litert-int8", "litert"), ("onnx-int8", "onnx")])
def test_each_backend_runs_its_own_file(version_dir, tmp_path, test_split, probabilities, backend, swapped_in):
    """The float files answer within 1e-7 of each other: only a file swapped for another shows which one runs."""
    copy = tmp_path / "digits" / "1"
    shutil.copytree(version_dir, copy)
    shutil.copyfile(version_dir / model_file(swapped_in).file_name, copy / model_file(backend).file_name)
    swapped = load_exported(copy, backend).probabilities(test_split[0])
    np.testing.assert_allclose(swapped, probabilities[swapped_in], atol=1e-6)
    assert not np.allclose(swapped, probabilities[backend], atol=1e-4)
