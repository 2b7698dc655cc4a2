"""Sources: IDX parsing, the digits loader and the TFDS path (mocked: no downloads here)."""

import gzip

import numpy as np
import pytest

from components.config import DataConfig
from components.errors import UserError
from components.sources import read_digits, read_idx, read_idx_dir, read_source
from tests.conftest import write_idx


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_roundtrip_raw_and_gzip(tmp_path, name):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / name, array)
    np.testing.assert_array_equal(read_idx(tmp_path / name), array)


def test_idx_with_a_wrong_magic_number_is_refused(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x50\x4b\x03\x04" + bytes(20))
    with pytest.raises(UserError, match="not an IDX file \\(magic number 504b0304\\)"):
        read_idx(path)


def test_truncated_idx_is_refused(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, np.zeros((10, 4, 4), np.uint8))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(UserError, match=r"truncated or padded IDX file: header says shape \(10, 4, 4\)"):
        read_idx(path)


def test_corrupt_gzip_is_refused(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + bytes(100))[:-10])
    with pytest.raises(UserError, match="cannot read it"):
        read_idx(path)


def test_idx_dir_reads_both_splits_with_channels(idx_dir):
    data = read_idx_dir(idx_dir)
    assert data.train_images.shape == (60, 6, 6, 1) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (30, 6, 6, 1)
    assert data.class_names == ("0", "1", "2")


def test_idx_dir_missing_file_names_it(idx_dir):
    (idx_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="no t10k-labels\\* file"):
        read_idx_dir(idx_dir)


def test_digits_are_raw_pixels_0_to_255():
    data = read_digits()
    assert data.train_images.shape == (1797, 8, 8, 1)
    assert data.train_images.dtype == np.uint8 and data.train_images.max() == 255
    assert data.test_images is None
    assert data.class_names == tuple("0123456789")


def test_unknown_source_names_the_offline_alternatives():
    with pytest.raises(UserError, match="idx:/usr/share/datasets/fashion-mnist"):
        DataConfig(source="csv:foo")


def test_tfds_unknown_dataset_is_a_user_error():
    with pytest.raises(UserError, match="TFDS has no dataset of that name"):
        read_source(DataConfig(source="tfds:no_such_dataset_xyz"))


def test_tfds_not_prepared_fails_fast_with_offline_alternatives(tmp_path):
    with pytest.raises(UserError) as caught:
        read_source(DataConfig(source="tfds:mnist", tfds_data_dir=str(tmp_path)))
    message = str(caught.value)
    assert "not prepared" in message and "data.download=true" in message and "data.source=digits" in message


def test_tfds_path_reads_images_and_labels_under_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=40):
        data = read_source(DataConfig(source="tfds:mnist", tfds_data_dir=str(tmp_path)))
    assert data.train_images.shape == (40, 28, 28, 1) and data.train_images.dtype == np.uint8
    assert data.train_labels.dtype == np.int64 and data.train_labels.max() < 10
    assert data.class_names == tuple(str(i) for i in range(10))


def write_npz(path, **arrays):
    """An npz with make_images data for the four Keras keys, overridden by `arrays`."""
    from tests.conftest import make_images

    train, test = make_images(10), make_images(4, seed=1)
    data = {"x_train": train[0][..., 0], "y_train": train[1], "x_test": test[0][..., 0], "y_test": test[1]}
    np.savez(path, **{**data, **arrays})
    return data


def test_npz_reads_the_keras_layout(tmp_path):
    data = write_npz(tmp_path / "d.npz")
    source = read_source(DataConfig(source=f"npz:{tmp_path / 'd.npz'}"))
    np.testing.assert_array_equal(source.train_images[..., 0], data["x_train"])
    np.testing.assert_array_equal(source.test_labels, data["y_test"])
    assert source.train_images.shape == (30, 6, 6, 1) and source.class_names == ("0", "1", "2")


def test_npz_with_object_arrays_is_refused_without_unpickling(tmp_path):
    write_npz(tmp_path / "d.npz", y_train=np.array([object()] * 30, dtype=object))
    with pytest.raises(UserError, match="array 'y_train' holds Python objects, which are refused"):
        read_source(DataConfig(source=f"npz:{tmp_path / 'd.npz'}"))


def test_npz_missing_key_and_not_a_zip_are_named(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(UserError, match="no y_train, x_test, y_test array\\(s\\) \\(it has x_train\\)"):
        read_source(DataConfig(source=f"npz:{tmp_path / 'd.npz'}"))
    (tmp_path / "e.npz").write_text("x")
    with pytest.raises(UserError, match="not an .npz \\(zip\\) file"):
        read_source(DataConfig(source=f"npz:{tmp_path / 'e.npz'}"))


def test_npz_with_mismatched_lengths_is_refused(tmp_path):
    write_npz(tmp_path / "d.npz", y_test=np.zeros(3, np.int64))
    with pytest.raises(UserError, match="x_test has 12 images but y_test has 3 labels"):
        read_source(DataConfig(source=f"npz:{tmp_path / 'd.npz'}"))


def test_tfds_download_offline_fails_fast_naming_the_host(tmp_path, monkeypatch):
    import socket
    import urllib.request

    import tensorflow_datasets as tfds

    def unreachable(address, timeout=None):
        raise OSError("Network is unreachable")

    def must_not_run(self, *args, **kwargs):
        raise AssertionError("download_and_prepare ran despite an unreachable host")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(urllib.request, "getproxies", dict)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", must_not_run)
    with pytest.raises(UserError) as caught:
        read_source(DataConfig(source="tfds:mnist", tfds_data_dir=str(tmp_path), download=True))
    message = str(caught.value)
    assert "cannot reach storage.googleapis.com:443" in message and "data.source=digits" in message
