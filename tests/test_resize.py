"""data.image_size on array sources: ingest resizes digits, idx:, npz: and tfds: images as image files are resized.

Training and serving must see the same pixels: a model trained on resized arrays is served images that
`decode_image` resizes, so both go through Pillow's bilinear resize (`components.images.RESAMPLING`).
"""

import numpy as np
import pytest
from PIL import Image

from components.config import DataConfig
from components.errors import UserError
from components.images import decode_image, resize_images
from components.ingest import ingest
from components.shards.tf_reader import load_split
from components.source_data import ImageFormat
from tests.conftest import make_images


def pillow_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """One image resized by Pillow itself, as the folder reader and the server resize a file."""
    resized = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).resize(
        (width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized).reshape(height, width, image.shape[-1])


def write_npz(path, train, test):
    np.savez(path, x_train=train[0], y_train=train[1], x_test=test[0], y_test=test[1])
    return path


def test_digits_at_32x32_are_pillows_bilinear_resize_of_the_8x8_originals(tmp_path):
    original = ingest(DataConfig(), tmp_path / "8x8")
    resized = ingest(DataConfig(image_size=(32, 32)), tmp_path / "32x32")
    assert original.image_shape == (8, 8, 1) and resized.image_shape == (32, 32, 1)
    assert resized.num_examples == original.num_examples  # the same rows: the split does not look at pixels
    for split in ("train", "val", "test"):
        small, labels = load_split(original, split)
        large, large_labels = load_split(resized, split)
        assert large.shape == (len(small), 32, 32, 1) and large.dtype == np.uint8
        np.testing.assert_array_equal(large_labels, labels)
        np.testing.assert_array_equal(large[0], pillow_bilinear(small[0], 32, 32))
        np.testing.assert_array_equal(large, resize_images(small, (32, 32)))
    assert len(np.unique(large)) > 17  # interpolated, not the 17 gray levels of the 0..16 originals


def test_another_image_size_is_other_data(tmp_path):
    sha256 = {size: ingest(DataConfig(image_size=size), tmp_path / str(size)).data_sha256
              for size in [(), (8, 8), (16, 16), (16, 12)]}
    assert sha256[()] == sha256[(8, 8)]  # the digits' own size: nothing resized
    assert len({sha256[()], sha256[(16, 16)], sha256[(16, 12)]}) == 3


def test_images_are_resized_a_chunk_at_a_time_and_chunks_are_counted_at_the_larger_size(tmp_path, monkeypatch):
    import components.images as images_module
    import components.shards.layout as layout_module

    whole = ingest(DataConfig(image_size=(16, 16)), tmp_path / "whole")
    monkeypatch.setattr(layout_module, "CHUNK_BYTES", 1024)  # 64-byte digits, 256 bytes resized: 4 per chunk
    resized_counts = []

    def counted(images, size):
        resized_counts.append(len(images))
        return resize_images(images, size)

    monkeypatch.setattr(images_module, "resize_images", counted)
    chunked = ingest(DataConfig(image_size=(16, 16)), tmp_path / "chunked")
    assert max(resized_counts) == 4 and sum(resized_counts) == sum(whole.num_examples.values())
    assert chunked.data_sha256 == whole.data_sha256


def test_npz_rgb_images_are_resized_height_by_width(tmp_path):
    train, test = make_images(12, shape=(6, 8, 3)), make_images(4, shape=(6, 8, 3), seed=1)
    splits = ingest(DataConfig(source=f"npz:{write_npz(tmp_path / 'rgb.npz', train, test)}", image_size=(10, 14),
                               val_fraction=0.25), tmp_path / "out")
    assert splits.image_shape == (10, 14, 3) and splits.dtype == "uint8"
    images, labels = load_split(splits, "test")  # a source's test split keeps its order
    np.testing.assert_array_equal(labels, test[1])
    expected = np.stack([pillow_bilinear(image, 10, 14) for image in test[0]])
    np.testing.assert_array_equal(images, expected)
    assert load_split(splits, "train")[0].shape[1:] == (10, 14, 3)


def test_tfds_images_are_resized(tmp_path):
    import tensorflow_datasets as tfds

    def ingest_mock(out_dir, **settings):
        with tfds.testing.mock_data(num_examples=200):  # the same mock images each time
            return ingest(DataConfig(source="tfds:mnist", tfds_data_dir=str(tmp_path / "tfds"), **settings), out_dir)

    original = ingest_mock(tmp_path / "28x28")
    resized = ingest_mock(tmp_path / "14x14", image_size=(14, 14))
    assert original.image_shape == (28, 28, 1) and resized.image_shape == (14, 14, 1)
    for split in ("train", "test"):
        np.testing.assert_array_equal(load_split(resized, split)[0],
                                      resize_images(load_split(original, split)[0], (14, 14)))


@pytest.mark.parametrize("channels, size", [(1, (5, 9)), (3, (9, 5)), (3, (3, 3))])
def test_an_array_resized_in_training_is_the_file_decoded_in_serving(tmp_path, channels, size):
    (image,), _ = make_images(1, num_classes=1, shape=(6, 7, channels))
    path = tmp_path / "image.png"
    Image.fromarray(image.squeeze(-1) if channels == 1 else image).save(path)
    served = decode_image(path, ImageFormat(*size, channels, resize=True))
    np.testing.assert_array_equal(resize_images(image[np.newaxis], size)[0], served)


@pytest.mark.parametrize("images, what", [
    (np.zeros((20, 6, 6, 4), np.uint8), "uint8 with 4 channel"),
    (np.zeros((20, 6, 6, 2), np.uint8), "uint8 with 2 channel"),
    (np.zeros((20, 6, 6, 1), np.float32), "float32 with 1 channel"),
])
def test_images_pillow_cannot_resize_alike_are_refused_before_any_split_is_written(tmp_path, images, what):
    labels = np.arange(20) % 2
    path = write_npz(tmp_path / "odd.npz", (images, labels), (images[:4], labels[:4]))
    with pytest.raises(UserError, match=rf"^data.image_size=\(8, 8\) resizes 8-bit images .* source's are {what}"):
        ingest(DataConfig(source=f"npz:{path}", image_size=(8, 8)), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert ingest(DataConfig(source=f"npz:{path}", image_size=(6, 6)), tmp_path / "own").image_shape[:2] == (6, 6)


def test_resize_images_refuses_what_it_cannot_resize_alike():
    with pytest.raises(ValueError, match="uint8 images of 1 or 3 channels"):
        resize_images(np.zeros((1, 4, 4, 4), np.uint8), (2, 2))
