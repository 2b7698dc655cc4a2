"""Export's checks: parity on every exported path (near-ties tolerated), one kind of model per name, ONNX axes."""

import json

import numpy as np
import onnxruntime
import pytest

from components.blessing import Blessing, ChanceTest
from components.config import ModelConfig
from components.converters import write_tflite
from components.errors import UserError
from components.export import ParityError, check_parity, check_same_kind, compare, write_onnx, write_saved_model
from components.model import NetworkSpec, build_model
from components.saved_models import ModelKind
from tests.conftest import make_images

SHAPE = (6, 6, 1)
TINY = ModelConfig(conv_widths=(4,), dense_units=8, dropout=0.0)


def tiny_model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return build_model(TINY, SHAPE, 3, 60.0, 70.0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model written as a SavedModel, ONNX and LiteRT into one folder."""
    model = tiny_model(0)
    version_dir = tmp_path_factory.mktemp("version")
    write_saved_model(model, SHAPE, version_dir)
    write_onnx(model, SHAPE, version_dir / "model.onnx", 17)
    write_tflite(version_dir, version_dir / "model.tflite")
    return model, version_dir


def test_parity_holds_for_the_model_that_was_exported(exported):
    model, version_dir = exported
    assert check_parity(model, version_dir, make_images(8)[0], 1e-4) < 1e-4


def test_parity_fails_for_another_model_with_the_same_shapes(exported):
    _, version_dir = exported
    with pytest.raises(ParityError, match="disagrees with the Keras model"):
        check_parity(tiny_model(1), version_dir, make_images(8)[0], 1e-4)


@pytest.mark.parametrize("path", ["SavedModel serving_default", "SavedModel serving_uint8", "ONNX Runtime", "LiteRT"])
def test_every_exported_path_is_compared_uint8_and_litert_included(exported, monkeypatch, path):
    import components.export as export_module

    model, version_dir = exported
    real = export_module.exported_predictions

    def broken(version_dir, images):
        outputs = real(version_dir, images)
        assert path in outputs
        outputs[path] = {"probabilities": np.roll(np.asarray(outputs[path]["probabilities"]), 1, axis=1)}
        return outputs

    monkeypatch.setattr(export_module, "exported_predictions", broken)
    with pytest.raises(ParityError, match=f"{path} disagrees"):
        check_parity(model, version_dir, make_images(8)[0], 1e-4)


def test_the_litert_file_of_another_model_fails_parity(exported, tmp_path):
    import shutil

    model, version_dir = exported
    other = tmp_path / "other"
    write_saved_model(tiny_model(1), SHAPE, other)
    shutil.copytree(version_dir, tmp_path / "mixed")
    write_tflite(other, tmp_path / "mixed" / "model.tflite")
    with pytest.raises(ParityError, match="LiteRT disagrees"):
        check_parity(model, tmp_path / "mixed", make_images(8)[0], 1e-4)


def test_a_flip_between_near_tied_classes_is_tolerated_a_decisive_one_is_not():
    expected = np.array([[0.50000, 0.49999, 0.00001], [0.7, 0.2, 0.1]], np.float32)
    near_tie_flipped = np.array([[0.49999, 0.50000, 0.00001], [0.7, 0.2, 0.1]], np.float32)
    assert compare("ONNX", expected, {"probabilities": near_tie_flipped}, 1e-4) <= 1e-4
    decisive = np.array([[0.50000, 0.49999, 0.00001], [0.45, 0.46, 0.09]], np.float32)  # within 0.3 of expected
    with pytest.raises(ParityError, match="1 other predicted classes"):
        compare("ONNX", expected, {"probabilities": decisive}, 0.3)
    with pytest.raises(ParityError, match="max \\|diff\\| 1.00e-03"):
        compare("ONNX", expected, {"probabilities": expected + np.float32(1e-3)}, 1e-4)


def test_the_onnx_batch_axis_is_named_batch(exported):
    _, version_dir = exported
    session = onnxruntime.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", *SHAPE]
    assert session.get_outputs()[0].shape == ["batch", 3]


def write_version(model_dir, version: int, shape, class_names) -> None:
    (model_dir / str(version)).mkdir(parents=True)
    metadata = {"input": {"shape": [None, *shape]}, "class_names": list(class_names)}
    (model_dir / str(version) / "metadata.json").write_text(json.dumps(metadata))


@pytest.mark.parametrize("shape, class_names, reason", [
    ((32, 32, 3), ("a", "b", "c"), "32x32x3 images of 3 classes"),
    (SHAPE, ("a", "b"), "6x6x1 images of 2 classes (a, b)"),
    (SHAPE, ("c", "b", "a"), "6x6x1 images of 3 classes (c, b, a)"),
])
def test_a_name_is_kept_for_one_kind_of_model(tmp_path, shape, class_names, reason):
    model_dir = tmp_path / "saved_models" / "digits"
    write_version(model_dir, 1, shape, class_names)
    write_version(model_dir, 2, SHAPE, ("a", "b", "c"))
    check_same_kind(model_dir, ModelKind(SHAPE, ("a", "b", "c")))  # the newest version decides: same kind
    write_version(model_dir, 3, shape, class_names)
    with pytest.raises(UserError) as caught:
        check_same_kind(model_dir, ModelKind(SHAPE, ("a", "b", "c")))
    message = str(caught.value)
    assert message.startswith(f"saved_models/digits/3 takes {reason}")
    assert "set export.model_name to another name" in message
    check_same_kind(tmp_path / "saved_models" / "new", ModelKind(SHAPE, ("a", "b", "c")))  # nothing there yet


def test_another_kind_published_while_exporting_is_caught_before_the_rename(tmp_path, monkeypatch):
    import components.export as export_module
    from components.artifacts import Metrics, SchemaAndStatistics, TrainedModel
    from components.config import ExportConfig
    from tests.test_validate import write_splits

    model = tiny_model(0)
    model.save(tmp_path / "model.keras")
    NetworkSpec.of(TINY, SHAPE, 3, 60.0, 70.0).write(tmp_path / "network.json")
    trained = TrainedModel(tmp_path / "model.keras", "float32", tmp_path / "history.json", "w" * 64, 1,
                           tmp_path / "training.json", network_path=tmp_path / "network.json")
    (tmp_path / "data").mkdir()
    splits = write_splits(tmp_path / "data", make_images(4))
    schema = SchemaAndStatistics(tmp_path / "schema.json", tmp_path / "statistics.json", SHAPE, 3)
    # read for the model card before the lock is taken
    (tmp_path / "m.json").write_text("{}")
    blessing = Blessing(True, "blessed", None, 0.9, ChanceTest("cat", 0.5, 4, 4, 0.06), None, None, {})
    (tmp_path / "b.json").write_text(json.dumps(blessing.to_json()))
    metrics = Metrics(tmp_path / "m.json", tmp_path / "b.json", 0.5, 0.9, True, "blessed", tmp_path / "p.npz")
    model_dir = tmp_path / "saved_models" / "shared"
    real_check = export_module.check_parity

    def another_run_publishes_meanwhile(*args):
        write_version(model_dir, 1, (32, 32, 3), ("cat", "dog"))
        return real_check(*args)

    monkeypatch.setattr(export_module, "check_parity", another_run_publishes_meanwhile)
    with pytest.raises(UserError, match="saved_models/shared/1 takes 32x32x3 images of 2 classes"):
        export_module.export(ExportConfig(model_name="shared", parity_examples=4), trained, splits, schema, metrics,
                             tmp_path / "saved_models", "run", tmp_path / "out")
    assert sorted(p.name for p in model_dir.iterdir()) == ["1"]  # nothing else published, no staging left


def test_a_file_where_the_model_folder_belongs_is_refused_before_any_export(tmp_path):
    (tmp_path / "digits").write_text("")
    with pytest.raises(UserError, match="digits is a file, not a model folder; move it, or set export.model_name"):
        check_same_kind(tmp_path / "digits", ModelKind(SHAPE, ("a", "b", "c")))
