"""The TFDS source through ingest and validate, with TFDS's own mock (no download here)."""

import numpy as np
import pytest

from components.artifacts import load_split
from components.ingest import ingest
from components.validate import validate
from components.config import DataConfig, ValidateConfig


def test_tfds_mnist_through_ingest_and_validate(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=200):
        splits = ingest(DataConfig(source="tfds:mnist", tfds_data_dir=str(tmp_path / "tfds")), tmp_path / "ingest")
    assert sum(splits.num_examples.values()) == 200
    assert splits.class_names == tuple(str(i) for i in range(10))
    images, labels = load_split(splits, "train")
    assert images.shape[1:] == (28, 28, 1) and images.dtype == np.uint8
    schema = validate(ValidateConfig(), splits, tmp_path / "validate")
    assert schema.image_shape == (28, 28, 1) and schema.num_classes == 10


@pytest.mark.parametrize("name, shape, num_classes", [
    ("fashion_mnist", (28, 28, 1), 10), ("kmnist", (28, 28, 1), 10), ("emnist/letters", (28, 28, 1), 37),
    ("cifar10", (32, 32, 3), 10),
])
def test_other_tfds_image_datasets_keep_their_shape_and_classes(tmp_path, name, shape, num_classes):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=20 * num_classes):
        splits = ingest(DataConfig(source=f"tfds:{name}", tfds_data_dir=str(tmp_path / "tfds"),
                                   val_fraction=0.25, test_fraction=0.25), tmp_path / "ingest")
    images, _ = load_split(splits, "train")
    assert images.shape[1:] == shape and images.dtype == np.uint8
    assert len(splits.class_names) == num_classes
