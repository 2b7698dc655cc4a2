"""Validate: the schema and statistics on good data, a clear stop on each kind of bad data."""

import json

import numpy as np
import pytest

from components.artifacts import Splits, split_path
from components.config import ValidateConfig
from components.errors import UserError
from components.validate import validate
from tests.conftest import make_images


def write_splits(tmp_path, train, val=None, test=None, class_names=("a", "b", "c")) -> Splits:
    val = val if val is not None else make_images(2, seed=1)
    test = test if test is not None else make_images(3, seed=2)
    for name, (images, labels) in {"train": train, "val": val, "test": test}.items():
        np.savez(split_path(tmp_path, name), images=images, labels=labels)
    counts = {"train": len(train[1]), "val": len(val[1]), "test": len(test[1])}
    return Splits(tmp_path, "f" * 64, tuple(class_names), counts)


def test_schema_and_statistics_of_good_data(tmp_path):
    train = make_images(4)
    schema = validate(ValidateConfig(), write_splits(tmp_path, train), tmp_path / "out")
    assert schema.image_shape == (6, 6, 1) and schema.num_classes == 3
    written = json.loads(schema.schema_path.read_text())
    assert written == {"image_shape": [6, 6, 1], "dtype": "uint8", "num_classes": 3, "class_names": ["a", "b", "c"]}
    stats = json.loads(schema.statistics_path.read_text())
    assert stats["train"]["count"] == 12 and stats["train"]["class_counts"] == [4, 4, 4]
    assert stats["train"]["pixel_max"] == 250.0
    assert stats["train"]["pixel_mean"] == pytest.approx(train[0].mean())
    assert stats["test"]["count"] == 9


def test_label_out_of_range_names_index_and_range(tmp_path):
    images, labels = make_images(4)
    labels[5] = 7
    with pytest.raises(UserError, match="train label 7 at index 5 is out of range 0..2"):
        validate(ValidateConfig(), write_splits(tmp_path, (images, labels)), tmp_path / "out")


def test_non_integer_labels(tmp_path):
    images, labels = make_images(4)
    with pytest.raises(UserError, match="labels must be integers"):
        validate(ValidateConfig(), write_splits(tmp_path, (images, labels.astype(np.float32))), tmp_path / "o")


def test_nan_or_inf_pixels(tmp_path):
    images, labels = make_images(4)
    images = images.astype(np.float32)
    images[3, 0, 0, 0] = np.inf
    val = tuple(make_images(2, seed=1))
    test = tuple(make_images(3, seed=2))
    splits = write_splits(tmp_path, (images, labels), (val[0].astype(np.float32), val[1]),
                          (test[0].astype(np.float32), test[1]))
    with pytest.raises(UserError, match="train image at index 3 has NaN or inf pixels"):
        validate(ValidateConfig(), splits, tmp_path / "out")


def test_inconsistent_shapes(tmp_path):
    test_images, test_labels = make_images(3, shape=(7, 6, 1), seed=2)
    with pytest.raises(UserError, match="splits disagree on image shape"):
        validate(ValidateConfig(), write_splits(tmp_path, make_images(4), test=(test_images, test_labels)),
                 tmp_path / "out")


def test_empty_split(tmp_path):
    empty = (np.zeros((0, 6, 6, 1), np.uint8), np.zeros((0,), np.int64))
    with pytest.raises(UserError, match="the val split is empty"):
        validate(ValidateConfig(), write_splits(tmp_path, make_images(4), val=empty), tmp_path / "out")


def test_class_missing_from_train(tmp_path):
    images, labels = make_images(4)
    keep = labels != 1
    with pytest.raises(UserError, match="class\\(es\\) b have no training example"):
        validate(ValidateConfig(), write_splits(tmp_path, (images[keep], labels[keep])), tmp_path / "out")


def test_imbalance_is_a_warning_not_an_error(tmp_path, caplog):
    images, labels = make_images(12)
    keep = (labels != 2) | (np.cumsum(labels == 2) <= 1)
    validate(ValidateConfig(imbalance_warn_ratio=5.0), write_splits(tmp_path, (images[keep], labels[keep])),
             tmp_path / "out")
    assert "class imbalance 12.0:1" in caplog.text


def test_statistics_record_leakage_skips_and_the_summary(tmp_path, caplog):
    train = make_images(4)
    test_images, test_labels = make_images(3, seed=2)
    test_images[:2] = train[0][:2]  # two test images copied from train
    splits = write_splits(tmp_path, train, test=(test_images, test_labels))
    splits = Splits(splits.splits_dir, splits.data_sha256, splits.class_names, splits.num_examples, 5)
    schema = validate(ValidateConfig(), splits, tmp_path / "out")
    stats = json.loads(schema.statistics_path.read_text())
    assert stats["source"] == {"skipped_files": 5, "test_images_also_in_train": 2}
    assert stats["test"]["channel_mean"] == [pytest.approx(test_images.mean())]
    assert "2 of 9 test images are exact duplicates of training images (leakage)" in caplog.text
    assert schema.warnings == tuple(stats["warnings"]) and len(schema.warnings) == 1
    assert schema.description == "train 12 / val 6 / test 9, 6x6x1, 3 classes, 5 bad files skipped, 1 warning"


def test_test_pixels_far_from_train_are_a_warning(tmp_path, caplog):
    test_images, test_labels = make_images(3, seed=2)
    splits = write_splits(tmp_path, make_images(4), test=(test_images // 4, test_labels))
    schema = validate(ValidateConfig(drift_warn_std=0.5), splits, tmp_path / "out")
    assert "test pixels differ from train's" in caplog.text
    assert any("validate.drift_warn_std=0.5" in warning for warning in schema.warnings)
    quiet = validate(ValidateConfig(drift_warn_std=100.0), splits, tmp_path / "quiet")
    assert quiet.warnings == ()


def test_good_data_has_no_warnings(tmp_path):
    schema = validate(ValidateConfig(), write_splits(tmp_path, make_images(4)), tmp_path / "out")
    assert schema.warnings == () and schema.description.endswith("3 classes, 0 warnings")
