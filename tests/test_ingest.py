"""Ingest: stratified, seeded splits; the source's test split untouched; a content fingerprint."""

import dataclasses
import shutil

import numpy as np
import pytest

from components.config import DataConfig
from components.errors import UserError
from components.ingest import ingest
from components.shards.layout import read_layout
from components.shards.tf_reader import load_split
from tests.conftest import make_images, write_idx


def test_idx_test_split_is_kept_untouched_and_val_is_stratified(idx_dir, tmp_path):
    config = DataConfig(source=f"idx:{idx_dir}", val_fraction=0.25, seed=3)
    splits = ingest(config, tmp_path / "out")
    assert splits.num_examples == {"train": 45, "val": 15, "test": 30}
    val_images, val_labels = load_split(splits, "val")
    assert np.bincount(val_labels).tolist() == [5, 5, 5]
    from components.sources import read_idx_dir
    source = read_idx_dir(idx_dir)
    test_images, test_labels = load_split(splits, "test")
    np.testing.assert_array_equal(test_images, source.test_images)
    np.testing.assert_array_equal(test_labels, source.test_labels)


def test_splits_are_disjoint_and_cover_the_training_data(idx_dir, tmp_path):
    splits = ingest(DataConfig(source=f"idx:{idx_dir}", val_fraction=0.2), tmp_path / "out")
    train_images, _ = load_split(splits, "train")
    val_images, _ = load_split(splits, "val")
    rows = {bytes(image) for image in np.concatenate([train_images, val_images])}
    assert len(rows) == 60  # make_images' noise makes every image unique


def test_same_seed_same_splits_other_seed_other_splits(idx_dir, tmp_path):
    config = DataConfig(source=f"idx:{idx_dir}", val_fraction=0.25, seed=1)
    first = load_split(ingest(config, tmp_path / "a"), "val")[0]
    again = load_split(ingest(config, tmp_path / "b"), "val")[0]
    other = load_split(ingest(dataclasses.replace(config, seed=2), tmp_path / "c"), "val")[0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_fingerprint_follows_what_the_splits_hold_not_the_path(idx_dir, tmp_path):
    a = ingest(DataConfig(source=f"idx:{idx_dir}"), tmp_path / "a").fingerprint
    shutil.copytree(idx_dir, tmp_path / "copy")
    assert ingest(DataConfig(source=f"idx:{tmp_path / 'copy'}"), tmp_path / "b").fingerprint == a
    changed = [DataConfig(source=f"idx:{idx_dir}", seed=9), DataConfig(source=f"idx:{idx_dir}", val_fraction=0.3),
               DataConfig(source=f"idx:{idx_dir}", max_train_examples=30),
               DataConfig(source=f"idx:{idx_dir}", class_names="x,y,z")]
    fingerprints = {ingest(config, tmp_path / f"c{i}").fingerprint for i, config in enumerate(changed)}
    assert len(fingerprints | {a}) == len(changed) + 1
    images, labels = make_images(20, seed=5)
    write_idx(idx_dir / "train-images-idx3-ubyte.gz", images[..., 0])
    assert ingest(DataConfig(source=f"idx:{idx_dir}"), tmp_path / "d").fingerprint != a


def test_digits_get_a_seeded_stratified_test_split(tmp_path):
    splits = ingest(DataConfig(source="digits", test_fraction=0.2, val_fraction=0.1), tmp_path / "out")
    assert splits.num_examples["test"] == 360
    assert sum(splits.num_examples.values()) == 1797
    _, test_labels = load_split(splits, "test")
    assert np.bincount(test_labels).min() >= 35


def test_max_train_examples_caps_train_only(idx_dir, tmp_path):
    splits = ingest(DataConfig(source=f"idx:{idx_dir}", val_fraction=0.25, max_train_examples=30), tmp_path / "o")
    assert splits.num_examples == {"train": 30, "val": 15, "test": 30}
    assert np.bincount(load_split(splits, "train")[1]).tolist() == [10, 10, 10]


def test_class_names_override_must_match_the_number_of_classes(idx_dir, tmp_path):
    splits = ingest(DataConfig(source=f"idx:{idx_dir}", class_names="cat, dog,bird"), tmp_path / "a")
    assert splits.class_names == ("cat", "dog", "bird")
    with pytest.raises(UserError, match="data.class_names has 2 names but the data has 3 classes"):
        ingest(DataConfig(source=f"idx:{idx_dir}", class_names="cat,dog"), tmp_path / "b")


def test_a_class_too_small_to_split_is_a_user_error(idx_dir, tmp_path):
    images, labels = make_images(20)
    labels[:] = 0
    labels[0] = 1
    write_idx(idx_dir / "train-labels-idx1-ubyte.gz", labels)
    with pytest.raises(UserError, match="every class needs at least 2 training examples"):
        ingest(DataConfig(source=f"idx:{idx_dir}"), tmp_path / "out")


@pytest.mark.parametrize("out_dir_exists", [False, True])
def test_a_failure_while_writing_leaves_nothing_that_looks_finished(idx_dir, tmp_path, monkeypatch, out_dir_exists):
    import components.shards.writer as writer_module

    written = []
    real_write = writer_module._write_records

    def fail_on_third(*args):
        if len(written) == 2:
            raise OSError("disk full")
        written.append(real_write(*args))
        return written[-1]

    monkeypatch.setattr(writer_module, "_write_records", fail_on_third)
    if out_dir_exists:
        (tmp_path / "out").mkdir()
    with pytest.raises(OSError, match="disk full"):
        ingest(DataConfig(source=f"idx:{idx_dir}"), tmp_path / "out")
    assert len(written) == 2  # train and val were written, then removed
    assert (list((tmp_path / "out").iterdir()) == []) if out_dir_exists else not (tmp_path / "out").exists()


def test_labels_that_are_not_integers_are_refused(tmp_path):
    train, test = make_images(10), make_images(4, seed=1)
    np.savez(tmp_path / "d.npz", x_train=train[0], y_train=train[1].astype(np.float32), x_test=test[0],
             y_test=test[1])
    with pytest.raises(UserError, match="train labels have dtype float32; labels must be integers 0..2"):
        ingest(DataConfig(source=f"npz:{tmp_path / 'd.npz'}"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_train_and_test_images_of_other_shapes_are_refused(tmp_path):
    train, test = make_images(10), make_images(4, shape=(7, 6, 1), seed=1)
    np.savez(tmp_path / "d.npz", x_train=train[0], y_train=train[1], x_test=test[0], y_test=test[1])
    with pytest.raises(UserError, match=r"splits disagree on image shape or dtype: shapes \{'train': \(6, 6, 1\), "
                                        r"'test': \(7, 6, 1\)\}"):
        ingest(DataConfig(source=f"npz:{tmp_path / 'd.npz'}"), tmp_path / "out")


def test_chunks_written_in_any_size_give_the_same_splits(idx_dir, tmp_path, monkeypatch):
    import components.shards.layout as layout_module
    from components.shards.writer import SplitWriter

    whole = ingest(DataConfig(source=f"idx:{idx_dir}"), tmp_path / "whole")
    monkeypatch.setattr(layout_module, "CHUNK_BYTES", 100)  # 36-byte images: 2 per chunk, written and read
    chunk_sizes = []
    real_write_split = SplitWriter.write_split

    def counted(chunks):
        for images, labels in chunks:
            chunk_sizes.append(len(labels))
            yield images, labels

    def write_split(writer, split, chunks, num_examples):
        return real_write_split(writer, split, counted(chunks), num_examples)

    monkeypatch.setattr(SplitWriter, "write_split", write_split)
    chunked = ingest(DataConfig(source=f"idx:{idx_dir}"), tmp_path / "chunked")
    assert max(chunk_sizes) == 2
    assert chunked.fingerprint == whole.fingerprint
    for split in ("train", "val", "test"):
        for got, expected in zip(load_split(chunked, split), load_split(whole, split)):
            np.testing.assert_array_equal(got, expected)
    assert read_layout(tmp_path / "chunked") == read_layout(tmp_path / "whole")
