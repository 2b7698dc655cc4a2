"""Validate: the schema and statistics on good data, a clear stop on each kind of bad data."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from components.artifacts import Splits
from components.config import ValidateConfig
from components.errors import UserError
from components.shards.layout import split_files
from components.shards.writer import SplitWriter
from components.validate import validate
from tests.conftest import make_images


def write_splits(splits_dir, train, val=None, test=None, class_names=("a", "b", "c"), shard_mb=128.0,
                 chunk_examples=1_000_000) -> Splits:
    """Write (images, labels) per split in ingest's format, as `chunk_examples`-image chunks; returns the Splits."""
    image_shape, dtype = tuple(train[0].shape[1:]), train[0].dtype.name
    val = val if val is not None else make_images(2, shape=image_shape, seed=1)
    test = test if test is not None else make_images(3, shape=image_shape, seed=2)
    splits_dir.mkdir(parents=True, exist_ok=True)
    writer = SplitWriter(splits_dir, image_shape, dtype, tuple(class_names), shard_mb)
    for name, (images, labels) in {"train": train, "val": val, "test": test}.items():
        chunks = [(images[start: start + chunk_examples], labels[start: start + chunk_examples])
                  for start in range(0, len(labels), chunk_examples)]
        writer.write_split(name, chunks, len(labels))
    counts = {"train": len(train[1]), "val": len(val[1]), "test": len(test[1])}
    return Splits(splits_dir, writer.publish(), tuple(class_names), counts, image_shape, dtype)


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


def test_a_shard_whose_images_disagree_with_the_declared_shape(tmp_path):
    splits = write_splits(tmp_path / "data", make_images(4))
    wider = [make_images(count, shape=(7, 6, 1)) for count in (4, 2, 3)]
    other = write_splits(tmp_path / "other", *wider)
    shutil.copyfile(split_files(other, "test")[0], split_files(splits, "test")[0])
    with pytest.raises(UserError, match="splits disagree on image shape or dtype: a record of the test split .* holds "
                                        "no 6x6x1 uint8 image as splits.json declares"):
        validate(ValidateConfig(), splits, tmp_path / "out")


def test_labels_that_disagree_with_the_records_are_refused(tmp_path):
    splits = write_splits(tmp_path / "data", make_images(4))
    labels = np.load(tmp_path / "data" / "val-labels.npy")
    np.save(tmp_path / "data" / "val-labels.npy", (labels + 1) % 3)
    with pytest.raises(UserError, match="the val split's val-labels.npy disagrees with its records at index 0"):
        validate(ValidateConfig(), splits, tmp_path / "out")


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
    splits = dataclasses.replace(splits, num_skipped_files=5)
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


def test_statistics_streamed_in_chunks_equal_numpy_on_the_whole_arrays(tmp_path, monkeypatch):
    import components.validate as validate_module

    rng = np.random.default_rng(7)
    arrays = {name: (rng.integers(0, 256, (count, 5, 4, 3), dtype=np.uint8), np.arange(count) % 3)
              for name, count in (("train", 50), ("val", 9), ("test", 31))}
    arrays["test"][0][:4] = arrays["train"][0][10:14]  # four test images copied from train
    # Shards of 6 or 7 images, read in chunks of 4: the sums cross every boundary.
    splits = write_splits(tmp_path / "data", *arrays.values(), shard_mb=4e-4)
    real_chunks = validate_module.image_chunks
    monkeypatch.setattr(validate_module, "image_chunks", lambda *args: real_chunks(*args, chunk_examples=4))
    stats = json.loads(validate(ValidateConfig(), splits, tmp_path / "out").statistics_path.read_text())
    for name, (images, labels) in arrays.items():
        pixels = images.astype(np.float64)
        assert stats[name]["count"] == len(labels) and stats[name]["class_counts"] == np.bincount(labels).tolist()
        assert stats[name]["pixel_min"] == images.min() and stats[name]["pixel_max"] == images.max()
        assert stats[name]["pixel_mean"] == pytest.approx(pixels.mean(), rel=1e-12)
        assert stats[name]["pixel_std"] == pytest.approx(pixels.std(), rel=1e-9)
        np.testing.assert_allclose(stats[name]["channel_mean"], pixels.reshape(-1, 3).mean(axis=0), rtol=1e-12)
    assert stats["source"]["test_images_also_in_train"] == 4
