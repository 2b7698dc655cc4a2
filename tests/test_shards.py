"""The split files: TFRecord shards any tf.data reader can parse, their layout, labels and fingerprint, and
the readers (streamed, in memory, by position without TensorFlow)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from components.config import DataConfig
from components.errors import UserError
from components.ingest import ingest
from components.shards.layout import FORMAT, read_layout, split_files, split_labels, split_nbytes
from components.shards.record_reader import iter_records, read_images_at
from components.shards.tf_reader import image_chunks, load_split, parse_examples
from components.sources import read_idx_dir
from tests.conftest import QUIET_ENV, make_images, run_python, write_idx, write_image_folder

SPLITS = ("train", "val", "test")
# Images of 10,000 bytes, 0.01 MB: data.shard_mb's smallest value holds one, so shard sizes count images.
IMAGE_SHAPE = (100, 100, 1)
IMAGE_NBYTES = 10_000


@pytest.fixture
def large_idx_dir(tmp_path) -> Path:
    """conftest's idx_dir (3 classes, 60 train and 30 test images, gzipped) with images of IMAGE_SHAPE."""
    data_dir = tmp_path / "idx"
    data_dir.mkdir()
    for prefix, (images, labels) in (("train", make_images(20, shape=IMAGE_SHAPE)),
                                     ("t10k", make_images(10, shape=IMAGE_SHAPE, seed=1))):
        write_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz", images[..., 0])
        write_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return data_dir


@pytest.fixture
def small_shards(large_idx_dir, tmp_path):
    """The large idx fixture ingested in shards of 8 images (0.08 MB), as a user's config can ask."""
    return ingest(DataConfig(source=f"idx:{large_idx_dir}", shard_mb=0.08), tmp_path / "out")


def _parse_with_plain_tf_data(path_names: list[str]) -> tuple[list[bytes], list[int]]:
    import tensorflow as tf

    features = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    parsed = [tf.io.parse_single_example(record, features) for record in tf.data.TFRecordDataset(path_names)]
    return [example["image"].numpy() for example in parsed], [int(example["label"]) for example in parsed]


def test_records_parse_with_plain_tf_data_to_the_source_images_and_labels(large_idx_dir, small_shards):
    source = read_idx_dir(large_idx_dir)
    images, labels = _parse_with_plain_tf_data([str(path) for path in split_files(small_shards, "test")])
    assert images == [image.tobytes() for image in source.test_images]  # raw C-order bytes, the source's order
    assert labels == source.test_labels.tolist()
    seen = {}
    for split in ("train", "val"):
        images, labels = _parse_with_plain_tf_data([str(path) for path in split_files(small_shards, split)])
        seen.update(zip(images, labels))
    assert seen == {image.tobytes(): int(label) for image, label in zip(source.train_images, source.train_labels)}


def test_splits_json_describes_the_shards_and_is_the_contract(small_shards):
    layout = read_layout(small_shards.splits_dir)
    assert layout["format"] == FORMAT == "tfrecord of tf.train.Example (image: raw bytes, label: int64)"
    assert layout["image_shape"] == [100, 100, 1] and layout["dtype"] == "uint8"
    assert layout["class_names"] == ["0", "1", "2"]
    assert (small_shards.image_shape, small_shards.dtype) == ((100, 100, 1), "uint8")
    for split in SPLITS:
        entry = layout["splits"][split]
        assert entry["num_examples"] == small_shards.num_examples[split] == sum(entry["shard_examples"])
        assert [path.name for path in split_files(small_shards, split)] == entry["shards"]
        assert [sum(1 for _ in iter_records(path)) for path in split_files(small_shards, split)] == \
            entry["shard_examples"]
    names = sorted(path.name for path in small_shards.splits_dir.iterdir())
    shards = [name for split in SPLITS for name in layout["splits"][split]["shards"]]
    assert names == sorted(["splits.json", *(f"{split}-labels.npy" for split in SPLITS), *shards])


@pytest.mark.parametrize("shard_mb, expected", [(128.0, {"train": 1, "val": 1, "test": 1}),
                                                (0.08, {"train": 6, "val": 2, "test": 4}),
                                                (0.01, {"train": 45, "val": 15, "test": 30})])
def test_shard_count_and_spread_follow_shard_mb(large_idx_dir, tmp_path, shard_mb, expected):
    splits = ingest(DataConfig(source=f"idx:{large_idx_dir}", val_fraction=0.25, shard_mb=shard_mb), tmp_path / "o")
    layout = read_layout(splits.splits_dir)["splits"]
    for split, count in expected.items():
        num_examples = splits.num_examples[split]
        assert len(layout[split]["shards"]) == count == \
            max(1, math.ceil(num_examples * IMAGE_NBYTES / (shard_mb * 1e6)))
        assert layout[split]["shards"][-1] == f"{split}-{count - 1:05d}-of-{count:05d}.tfrecord"
        spread = layout[split]["shard_examples"]
        assert max(spread) - min(spread) <= 1 and spread == sorted(spread, reverse=True)
        assert split_nbytes(splits, split) == num_examples * IMAGE_NBYTES


def test_data_shard_mb_is_checked_with_the_config():
    with pytest.raises(UserError, match=r"data.shard_mb=0.001 cannot work; use a value from 0.01 to 4096"):
        DataConfig(shard_mb=0.001)


def test_read_images_at_equals_load_split_rows_across_shard_boundaries(small_shards):
    rng = np.random.default_rng(0)
    for split in SPLITS:
        images, labels = load_split(small_shards, split)
        starts = np.cumsum([0, *read_layout(small_shards.splits_dir)["splits"][split]["shard_examples"]])[:-1]
        boundaries = np.concatenate([starts, np.maximum(starts - 1, 0), [len(labels) - 1]])
        indices = np.concatenate([rng.integers(0, len(labels), 20), boundaries, [3, 3]])
        rng.shuffle(indices)
        np.testing.assert_array_equal(read_images_at(small_shards, split, indices), images[indices])
    assert read_images_at(small_shards, "test", []).shape == (0, *IMAGE_SHAPE)
    with pytest.raises(IndexError, match="outside the test split"):
        read_images_at(small_shards, "test", [30])


def test_labels_file_matches_the_records_and_the_chunks(small_shards):
    for split in SPLITS:
        _, parsed = _parse_with_plain_tf_data([str(path) for path in split_files(small_shards, split)])
        labels = split_labels(small_shards, split)
        assert labels.dtype == np.int64 and labels.tolist() == parsed
        chunks = list(image_chunks(small_shards, split, chunk_examples=7))
        assert [len(chunk_labels) for _, chunk_labels in chunks][:-1] == [7] * (len(chunks) - 1)
        np.testing.assert_array_equal(np.concatenate([chunk_labels for _, chunk_labels in chunks]), labels)


def test_a_corrupt_shard_is_named_in_one_line(small_shards):
    path = split_files(small_shards, "val")[0]
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF  # a pixel of the first record: its data CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"^a shard of the val split in .* is corrupt \([^\n]*corrupted record at 12"
                                        r"[^\n]*\); run ingest again$"):
        list(image_chunks(small_shards, "val"))


def test_load_split_reads_only_the_first_examples_when_limited(small_shards):
    images, labels = load_split(small_shards, "train")
    first, first_labels = load_split(small_shards, "train", limit=11)
    np.testing.assert_array_equal(first, images[:11])
    np.testing.assert_array_equal(first_labels, labels[:11])
    assert load_split(small_shards, "val", limit=1000)[0].shape == (6, *IMAGE_SHAPE)  # the whole split


def test_parse_examples_maps_a_batch_and_refuses_images_of_another_size(small_shards):
    import tensorflow as tf

    records = tf.data.TFRecordDataset([str(path) for path in split_files(small_shards, "test")]).batch(30)
    images, labels = parse_examples(IMAGE_SHAPE, "uint8")(next(iter(records)))
    assert images.dtype == tf.uint8 and images.shape == (30, *IMAGE_SHAPE) and labels.dtype == tf.int32
    np.testing.assert_array_equal(images.numpy(), load_split(small_shards, "test")[0])
    with pytest.raises(tf.errors.InvalidArgumentError):
        parse_examples((50, 100, 1), "uint8")(next(iter(records)))  # 30 records of 10,000 bytes are no 60 of 5,000


def test_the_train_split_is_stored_in_a_seeded_shuffled_order(idx_dir, tmp_path):
    labels = split_labels(ingest(DataConfig(source=f"idx:{idx_dir}", seed=4), tmp_path / "a"), "train")
    again = split_labels(ingest(DataConfig(source=f"idx:{idx_dir}", seed=4), tmp_path / "b"), "train")
    other = split_labels(ingest(DataConfig(source=f"idx:{idx_dir}", seed=5), tmp_path / "c"), "train")
    assert labels.tolist() == again.tolist() and labels.tolist() != other.tolist()
    assert len(set(labels[:6].tolist())) == 3  # the three classes mixed early on, not in runs


def test_fingerprint_changes_with_shard_layout_and_content_not_with_chunking(large_idx_dir, tmp_path):
    source = f"idx:{large_idx_dir}"
    base = ingest(DataConfig(source=source), tmp_path / "base").fingerprint
    assert ingest(DataConfig(source=source), tmp_path / "again").fingerprint == base
    resharded = ingest(DataConfig(source=source, shard_mb=1.0), tmp_path / "one_shard")
    assert resharded.fingerprint == base  # 1 MB still holds every split in one shard: the same files
    assert ingest(DataConfig(source=source, shard_mb=0.08), tmp_path / "many").fingerprint != base
    images, labels = make_images(20, shape=IMAGE_SHAPE)
    images[7, 2, 3, 0] ^= 1  # one pixel of one image
    write_idx(large_idx_dir / "train-images-idx3-ubyte.gz", images[..., 0])
    assert ingest(DataConfig(source=source), tmp_path / "pixel").fingerprint != base


def test_a_failed_folder_ingest_leaves_nothing_that_looks_finished(tmp_path):
    write_image_folder(tmp_path / "d" / "train", *make_images(6))
    write_image_folder(tmp_path / "d" / "test", *make_images(2, seed=1))
    (tmp_path / "d" / "test" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n")  # found last: after train and val
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="1 unreadable image file in .*test/b/broken.png: not an image"):
        ingest(DataConfig(source=f"folder:{tmp_path / 'd'}", val_fraction=0.25), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_skipped_files_shrink_their_split_which_is_laid_out_again(tmp_path):
    images, labels = make_images(20, shape=IMAGE_SHAPE)
    paths = write_image_folder(tmp_path / "d" / "train", images, labels)
    write_image_folder(tmp_path / "d" / "test", *make_images(10, shape=IMAGE_SHAPE, seed=1))
    for path in paths[:9]:
        path.write_bytes(b"")
    config = DataConfig(source=f"folder:{tmp_path / 'd'}", on_bad_file="skip", val_fraction=0.25, shard_mb=0.05)
    splits = ingest(config, tmp_path / "out")
    layout = read_layout(splits.splits_dir)["splits"]
    assert splits.num_skipped_files == 9 and splits.num_examples["train"] + splits.num_examples["val"] == 51
    for split in ("train", "val"):
        num_examples = splits.num_examples[split]
        assert len(layout[split]["shards"]) == math.ceil(num_examples / 5)  # 5 a shard, for what came, not was listed
        assert [sum(1 for _ in iter_records(path)) for path in split_files(splits, split)] == \
            layout[split]["shard_examples"]
        assert max(layout[split]["shard_examples"]) - min(layout[split]["shard_examples"]) <= 1
    kept = {image.tobytes(): int(label) for image, label in zip(images[9:], labels[9:])}
    stored = {image.tobytes(): int(label) for split in ("train", "val")
              for image, label in zip(*load_split(splits, split))}
    assert stored == kept


def test_many_files_are_decoded_in_worker_processes_to_the_same_splits(tmp_path, monkeypatch):
    import components.image_folder as image_folder

    write_image_folder(tmp_path / "d", *make_images(12, shape=(6, 6, 3)))
    (tmp_path / "d" / "c" / "bad.png").write_bytes(b"")
    config = DataConfig(source=f"folder:{tmp_path / 'd'}", on_bad_file="skip")
    in_process = ingest(config, tmp_path / "in_process")
    started = []
    real_pool = image_folder.ProcessPoolExecutor
    monkeypatch.setattr(image_folder, "ProcessPoolExecutor", lambda *a, **k: started.append(1) or real_pool(*a, **k))
    monkeypatch.setattr(image_folder, "POOL_MIN_FILES", 1)
    monkeypatch.setattr(image_folder, "MAX_CHUNK_FILES", 4)
    pooled = ingest(config, tmp_path / "pooled")
    assert started and pooled.fingerprint == in_process.fingerprint and pooled.num_skipped_files == 1


def test_reading_by_position_loads_no_tensorflow(small_shards):
    code = """
import json, sys
from pathlib import Path
from components.artifacts import Splits
from components.shards.layout import split_labels
from components.shards.record_reader import read_images_at
splits = Splits(Path(sys.argv[1]), "", ("0", "1", "2"), json.loads(sys.argv[2]), (100, 100, 1), "uint8")
images = read_images_at(splits, "test", [0, 29, 8])
print(json.dumps({"images": images.tolist(), "labels": split_labels(splits, "test")[:3].tolist(),
                  "loaded": sorted(name for name in ("tensorflow", "keras") if name in sys.modules)}))
"""
    result = run_python(code, str(small_shards.splits_dir), json.dumps(small_shards.num_examples))
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    images, labels = load_split(small_shards, "test")
    assert printed["loaded"] == [] and printed["images"] == images[[0, 29, 8]].tolist()
    assert printed["labels"] == labels[:3].tolist()


def test_decoding_falls_back_to_this_process_when_workers_cannot_start(tmp_path):
    """A spawned worker imports the main module: a script read from stdin has none to import."""
    write_image_folder(tmp_path / "d", *make_images(12))
    script = f"""
import logging
from pathlib import Path
import components.image_folder as image_folder
from components.config import DataConfig
from components.ingest import ingest
logging.basicConfig(level=logging.WARNING)
image_folder.POOL_MIN_FILES, image_folder.MAX_CHUNK_FILES = 1, 4
print(ingest(DataConfig(source="folder:{tmp_path / 'd'}"), Path("{tmp_path / 'piped'}")).fingerprint)
"""
    result = subprocess.run([sys.executable, "-"], input=script, env=QUIET_ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "decoding in this process instead" in result.stderr
    in_process = ingest(DataConfig(source=f"folder:{tmp_path / 'd'}"), tmp_path / "in_process")
    assert result.stdout.split()[-1] == in_process.fingerprint
