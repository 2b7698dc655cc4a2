"""The TFDS source through ingest and validate, with TFDS's own mock (no download here)."""

import numpy as np
import pytest

from components.config import DataConfig, ValidateConfig
from components.ingest import ingest
from components.shards.tf_reader import load_split
from components.validate import validate


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
    ("fashion_mnist", (28, 28, 1), 10), ("kmnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10),
])
def test_other_tfds_image_datasets_keep_their_shape_and_classes(tmp_path, name, shape, num_classes):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=20 * num_classes):
        splits = ingest(DataConfig(source=f"tfds:{name}", tfds_data_dir=str(tmp_path / "tfds"),
                                   val_fraction=0.25, test_fraction=0.25), tmp_path / "ingest")
    images, _ = load_split(splits, "train")
    assert images.shape[1:] == shape and images.dtype == np.uint8
    assert len(splits.class_names) == num_classes


def letters_as_the_real_data_has_them(self, split, decoders=None, read_config=None, **kwargs):
    """emnist/letters as published: its label feature declares 37 values, the images use 1..26 (a..z)."""
    import tensorflow as tf

    rng = np.random.default_rng(0 if split == "train" else 1)
    count = 26 * 20
    images = rng.integers(0, 256, size=(count, 28, 28, 1), dtype=np.uint8)
    labels = np.arange(count) % 26 + 1
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})


def test_emnist_letters_keeps_the_26_classes_its_images_use(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(as_dataset_fn=letters_as_the_real_data_has_them):
        splits = ingest(DataConfig(source="tfds:emnist/letters", tfds_data_dir=str(tmp_path / "tfds"),
                                   val_fraction=0.2),
                        tmp_path / "ingest")
    assert len(splits.class_names) == 26 and splits.class_names[0] == "1" and splits.class_names[-1] == "26"
    _, labels = load_split(splits, "train")
    assert labels.min() == 0 and labels.max() == 25
    schema = validate(ValidateConfig(), splits, tmp_path / "validate")
    assert schema.num_classes == 26
