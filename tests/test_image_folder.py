"""The folder: source: class names from folders, splits, conversion, image sizes, and unreadable files."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.config import DataConfig, ValidateConfig
from components.errors import UserError
from components.images import decode_image
from components.ingest import ingest
from components.shards.tf_reader import load_split
from components.source_data import ImageFormat
from components.validate import validate
from tests.conftest import make_images, write_image_folder


def test_flat_folder_gets_class_names_and_a_seeded_stratified_test_split(image_folder, tmp_path):
    config = DataConfig(source=f"folder:{image_folder}", test_fraction=0.25, val_fraction=0.25, seed=1)
    splits = ingest(config, tmp_path / "out")
    assert splits.class_names == ("a", "b", "c")
    assert splits.num_examples == {"train": 20, "val": 7, "test": 9}
    assert np.bincount(load_split(splits, "test")[1]).tolist() == [3, 3, 3]
    images, labels = load_split(splits, "train")
    assert images.shape == (20, 6, 6, 1) and images.dtype == np.uint8
    assert (images[np.arange(20), labels * 2, :, 0] == 250).all()  # make_images' bright row per class
    again = ingest(config, tmp_path / "again")
    np.testing.assert_array_equal(load_split(again, "test")[0], load_split(splits, "test")[0])


def test_png_pixels_and_labels_survive_exactly(tmp_path):
    images, labels = make_images(8)
    write_image_folder(tmp_path / "images", images, labels)
    splits = ingest(DataConfig(source=f"folder:{tmp_path / 'images'}", val_fraction=0.25), tmp_path / "out")
    written = {bytes(image): int(label) for split in ("train", "val", "test")
               for image, label in zip(*load_split(splits, split))}
    assert written == {bytes(image): int(label) for image, label in zip(images, labels)}


def test_train_and_test_folders_are_kept_as_the_splits(tmp_path):
    write_image_folder(tmp_path / "d" / "train", *make_images(6))
    write_image_folder(tmp_path / "d" / "test", *make_images(2, seed=1))
    splits = ingest(DataConfig(source=f"folder:{tmp_path / 'd'}", val_fraction=0.5), tmp_path / "out")
    assert splits.num_examples == {"train": 9, "val": 9, "test": 6}
    assert splits.class_names == ("a", "b", "c")


def test_a_test_class_without_training_folder_is_refused(tmp_path):
    write_image_folder(tmp_path / "d" / "train", *make_images(6), class_names=("a", "b", "c"))
    write_image_folder(tmp_path / "d" / "test", *make_images(2, seed=1), class_names=("a", "b", "zebra"))
    with pytest.raises(UserError, match="class 'zebra' has no folder in the training data"):
        ingest(DataConfig(source=f"folder:{tmp_path / 'd'}"), tmp_path / "out")


def test_rgb_images_are_converted_and_resized_as_configured(tmp_path):
    images, labels = make_images(8, shape=(10, 12, 3))
    write_image_folder(tmp_path / "rgb", images, labels, suffix=".jpg")
    keep = ingest(DataConfig(source=f"folder:{tmp_path / 'rgb'}", val_fraction=0.25), tmp_path / "keep")
    assert load_split(keep, "train")[0].shape[1:] == (10, 12, 3)
    config = DataConfig(source=f"folder:{tmp_path / 'rgb'}", image_size=(5, 7), channels=1, val_fraction=0.25)
    converted = ingest(config, tmp_path / "gray")
    assert load_split(converted, "train")[0].shape[1:] == (5, 7, 1)
    schema = validate(ValidateConfig(), converted, tmp_path / "validate")
    assert schema.image_shape == (5, 7, 1) and schema.num_classes == 3


@pytest.fixture
def bad_files(image_folder):
    """Four unreadable images (zero bytes, text, truncated, 16-bit) and a README among good ones."""
    (image_folder / "a" / "empty.png").write_bytes(b"")
    (image_folder / "b" / "notes.jpg").write_text("not an image")
    big = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(big).save(image_folder / "c" / "cut.png")
    data = (image_folder / "c" / "cut.png").read_bytes()
    (image_folder / "c" / "cut.png").write_bytes(data[: len(data) // 2])
    Image.fromarray(np.full((6, 6), 40000, np.uint16)).save(image_folder / "a" / "deep.png")
    (image_folder / "a" / "README.txt").write_text("labels by hand")
    return image_folder


def test_bad_files_fail_the_ingest_listing_each_with_its_reason(bad_files, tmp_path):
    with pytest.raises(UserError) as caught:
        ingest(DataConfig(source=f"folder:{bad_files}"), tmp_path / "out")
    message = str(caught.value)
    assert message.startswith("4 unreadable image files in ")
    assert "a/empty.png: empty file (0 bytes)" in message
    assert "b/notes.jpg: not an image" in message
    assert "c/cut.png: truncated or corrupt" in message
    assert "a/deep.png: unsupported mode I;16 (16-bit or float pixels)" in message
    assert "data.on_bad_file=skip" in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_skipped_bad_files_are_counted_in_the_statistics(bad_files, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    splits = ingest(DataConfig(source=f"folder:{bad_files}", on_bad_file="skip"), tmp_path / "out")
    assert sum(splits.num_examples.values()) == 36 and splits.num_skipped_files == 4
    assert "ignored 1 file(s) that are not PNG or JPEG by name" in caplog.text
    schema = validate(ValidateConfig(), splits, tmp_path / "validate")
    assert json.loads(schema.statistics_path.read_text())["source"]["skipped_files"] == 4
    assert "4 bad files skipped" in schema.description


def test_a_wrong_size_image_is_a_bad_file_unless_image_size_is_set(image_folder, tmp_path):
    Image.fromarray(np.zeros((9, 6), np.uint8)).save(image_folder / "b" / "tall.png")
    with pytest.raises(UserError, match=r"^1 image file of another size in .*: b/tall.png: 9x6 pixels \(height x "
                                        r"width\), not 6x6 like most images; set data.image_size=\(6, 6\) to resize"):
        ingest(DataConfig(source=f"folder:{image_folder}"), tmp_path / "a")
    splits = ingest(DataConfig(source=f"folder:{image_folder}", image_size=(6, 6)), tmp_path / "b")
    assert sum(splits.num_examples.values()) == 37


def test_when_the_first_image_alone_has_another_size_the_message_names_it_not_the_others(tmp_path):
    images, labels = make_images(30, shape=(28, 28, 1))
    paths = write_image_folder(tmp_path / "d", images, labels)
    first = min(paths)  # the first file listed: a/00000.png or the like
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(first)
    with pytest.raises(UserError) as caught:
        ingest(DataConfig(source=f"folder:{tmp_path / 'd'}"), tmp_path / "fail")
    message = str(caught.value)
    assert message == (f"1 image file of another size in {tmp_path / 'd'}: {first.relative_to(tmp_path / 'd')}: "
                       "30x30 pixels (height x width), not 28x28 like most images; set data.image_size=(28, 28) "
                       "to resize them all; fix or remove them, or set data.on_bad_file=skip to skip them")
    skipped = ingest(DataConfig(source=f"folder:{tmp_path / 'd'}", on_bad_file="skip"), tmp_path / "skip")
    assert skipped.image_shape == (28, 28, 1) and sum(skipped.num_examples.values()) == 89
    resized = ingest(DataConfig(source=f"folder:{tmp_path / 'd'}", image_size=(28, 28)), tmp_path / "resized")
    assert sum(resized.num_examples.values()) == 90


def test_unreadable_files_and_files_of_another_size_are_counted_apart(image_folder, tmp_path):
    Image.fromarray(np.zeros((9, 6), np.uint8)).save(image_folder / "b" / "tall.png")
    (image_folder / "c" / "page.png").write_text("<html></html>")
    with pytest.raises(UserError, match=r"^1 unreadable image file and 1 image file of another size in "):
        ingest(DataConfig(source=f"folder:{image_folder}"), tmp_path / "out")


def test_an_empty_class_folder_is_refused(image_folder, tmp_path):
    (image_folder / "d").mkdir()
    with pytest.raises(UserError, match="d: class folder has no PNG or JPEG images"):
        ingest(DataConfig(source=f"folder:{image_folder}"), tmp_path / "out")


def test_a_folder_without_class_folders_is_refused(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(b"")
    with pytest.raises(UserError, match="no class sub-folders, so no images"):
        ingest(DataConfig(source=f"folder:{tmp_path / 'flat'}"), tmp_path / "out")


@pytest.mark.parametrize("mode, dtype, channels", [("L", np.uint8, 1), ("RGB", np.uint8, 3), ("LA", np.uint8, 2)])
def test_modes_convert_to_the_configured_channels(tmp_path, mode, dtype, channels):
    array = np.full((4, 5, channels) if channels > 1 else (4, 5), 200, dtype)
    Image.fromarray(array, mode).save(tmp_path / "x.png")
    for target in (1, 3):
        decoded = decode_image(tmp_path / "x.png", ImageFormat(4, 5, target, resize=False))
        assert decoded.shape == (4, 5, target) and decoded.dtype == np.uint8 and decoded.max() == 200


@pytest.mark.slow
def test_the_model_takes_its_shape_and_classes_from_a_folder(tmp_path):
    from tests.conftest import run_pipeline_cli

    images, labels = make_images(15, num_classes=4, shape=(12, 10, 3))
    write_image_folder(tmp_path / "pets", images, labels, class_names=("cat", "dog", "fish", "owl"))
    run = run_pipeline_cli(tmp_path / "work", "--preset", "smoke", f"data.source=folder:{tmp_path / 'pets'}",
                           "train.epochs=1", "evaluate.max_p_value=1")  # one epoch need not beat chance: export it
    assert run.returncode == 0, run.stderr
    assert run.manifest["artifacts"]["validate"]["image_shape"] == [12, 10, 3]
    summary = run.manifest["artifacts"]["validate"]["description"]
    assert summary == "train 43 / val 5 / test 12, 12x10x3, 4 classes, 0 warnings"
    version_dir = Path(run.manifest["results"]["version_dir"])
    assert (version_dir / "labels.txt").read_text().split() == ["cat", "dog", "fish", "owl"]
    assert json.loads((version_dir / "metadata.json").read_text())["input"]["shape"] == [None, 12, 10, 3]


def test_a_folder_of_only_unreadable_images_is_refused(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "d" / name).mkdir(parents=True)
        (tmp_path / "d" / name / "x.png").write_text("not a png")
    with pytest.raises(UserError, match=r"d: none of the 2 image files can be read"):
        ingest(DataConfig(source=f"folder:{tmp_path / 'd'}", on_bad_file="skip"), tmp_path / "out")


def test_many_bad_files_are_counted_and_each_reason_said_once(tmp_path):
    images, labels = make_images(4)
    write_image_folder(tmp_path / "d", images, labels)
    for index in range(40):
        (tmp_path / "d" / "a" / f"empty{index:02d}.png").write_bytes(b"")
    (tmp_path / "d" / "b" / "page.png").write_text("not an image")
    with pytest.raises(UserError) as caught:
        ingest(DataConfig(source=f"folder:{tmp_path / 'd'}"), tmp_path / "out")
    message = str(caught.value)
    assert message.startswith("41 unreadable image files in ") and "\n" not in message
    assert message.count("empty file (0 bytes)") == 1 and "40 files: empty file (0 bytes) (a/empty00.png, " in message
    assert "b/page.png: not an image" in message and len(message) < 400
