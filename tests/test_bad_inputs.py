"""Bad inputs: a corpus of broken data built at test time, each with one clear answer.

Every case goes through ingest and validate in-process (the message must name the problem);
a representative subset also goes through the CLI (exit 2, one `error:` line, no traceback,
a failed manifest, and no split files plus schema a later run could take as finished).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from components.errors import UserError
from components.ingest import ingest
from components.validate import validate
from pipeline.config import resolve
from tests.conftest import make_images, run_pipeline_cli, write_idx, write_image_folder

Case = tuple[list[str], str]  # overrides, a fragment the error message must contain


def _npz(tmp_path: Path, **changes) -> str:
    train, test = make_images(10), make_images(4, seed=1)
    arrays = {"x_train": train[0], "y_train": train[1], "x_test": test[0], "y_test": test[1], **changes}
    np.savez(tmp_path / "data.npz", **arrays)
    return f"data.source=npz:{tmp_path / 'data.npz'}"


def _idx(tmp_path: Path) -> Path:
    data_dir = tmp_path / "idx"
    data_dir.mkdir()
    for prefix, (images, labels) in (("train", make_images(10)), ("t10k", make_images(4, seed=1))):
        write_idx(data_dir / f"{prefix}-images-idx3-ubyte", images[..., 0])
        write_idx(data_dir / f"{prefix}-labels-idx1-ubyte", labels)
    return data_dir


def _folder(tmp_path: Path) -> Path:
    write_image_folder(tmp_path / "images", *make_images(12))
    return tmp_path / "images"


def label_out_of_range(tmp_path: Path) -> Case:
    labels = make_images(4, seed=1)[1].copy()
    labels[5] = -1
    return [_npz(tmp_path, y_test=labels)], "test label -1 at index 5 is out of range 0..2"


def labels_not_integers(tmp_path: Path) -> Case:
    return [_npz(tmp_path, y_train=make_images(10)[1].astype(np.float32))], "labels must be integers"


def nan_pixels(tmp_path: Path) -> Case:
    images = make_images(4, seed=1)[0].astype(np.float32)
    images[2, 0, 0, 0] = np.nan
    train = make_images(10)[0].astype(np.float32)
    return [_npz(tmp_path, x_train=train, x_test=images)], "test image at index 2 has NaN or inf pixels"


def inconsistent_shapes(tmp_path: Path) -> Case:
    return [_npz(tmp_path, x_test=make_images(4, shape=(7, 6, 1))[0])], "splits disagree on image shape"


def empty_split(tmp_path: Path) -> Case:
    return ([_npz(tmp_path, x_test=np.zeros((0, 6, 6, 1), np.uint8), y_test=np.zeros(0, np.int64))],
            "the test split is empty")


def class_absent_from_train(tmp_path: Path) -> Case:
    images, labels = make_images(10)
    keep = labels != 1
    return [_npz(tmp_path, x_train=images[keep], y_train=labels[keep])], "class(es) 1 have no training example"


def npz_object_array(tmp_path: Path) -> Case:
    return ([_npz(tmp_path, y_train=np.array([{"label": 0}] * 30, dtype=object))],
            "array 'y_train' holds Python objects, which are refused")


def idx_wrong_magic(tmp_path: Path) -> Case:
    data_dir = _idx(tmp_path)
    path = data_dir / "train-images-idx3-ubyte"
    path.write_bytes(b"\x89PNG" + path.read_bytes()[4:])
    return [f"data.source=idx:{data_dir}"], "train-images-idx3-ubyte: not an IDX file (magic number 89504e47)"


def idx_truncated(tmp_path: Path) -> Case:
    data_dir = _idx(tmp_path)
    path = data_dir / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-3])
    return [f"data.source=idx:{data_dir}"], "t10k-labels-idx1-ubyte: truncated or padded IDX file"


def folder_without_images(tmp_path: Path) -> Case:
    (tmp_path / "empty").mkdir()
    return [f"data.source=folder:{tmp_path / 'empty'}"], "no class sub-folders, so no images"


def empty_class_folder(tmp_path: Path) -> Case:
    folder_dir = _folder(tmp_path)
    (folder_dir / "d").mkdir()
    (folder_dir / "d" / "notes.txt").write_text("to do")
    return [f"data.source=folder:{folder_dir}"], "d: class folder has no PNG or JPEG images"


def truncated_zero_byte_and_fake_images(tmp_path: Path) -> Case:
    folder_dir = _folder(tmp_path)
    noise = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(folder_dir / "a" / "cut.png")
    (folder_dir / "a" / "cut.png").write_bytes((folder_dir / "a" / "cut.png").read_bytes()[:500])
    (folder_dir / "b" / "zero.png").write_bytes(b"")
    (folder_dir / "c" / "page.jpg").write_text("<html></html>")
    return ([f"data.source=folder:{folder_dir}"],
            "3 unreadable image files in ")


def sixteen_bit_png(tmp_path: Path) -> Case:
    folder_dir = _folder(tmp_path)
    Image.fromarray(np.full((6, 6), 60000, np.uint16)).save(folder_dir / "b" / "deep.png")
    return [f"data.source=folder:{folder_dir}"], "b/deep.png: unsupported mode I;16"


def wrong_size_image(tmp_path: Path) -> Case:
    folder_dir = _folder(tmp_path)
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(folder_dir / "c" / "wide.png")
    return [f"data.source=folder:{folder_dir}"], "c/wide.png: 6x8 pixels (height x width), not 6x6 like most images"


def bad_on_bad_file_value(tmp_path: Path) -> Case:
    return [_npz(tmp_path), "data.on_bad_file=maybe"], "data.on_bad_file='maybe' cannot work; use one of fail, skip"


def float_pixels(tmp_path: Path) -> Case:
    train, test = make_images(10), make_images(4, seed=1)
    return [_npz(tmp_path, x_train=train[0] / 255.0, x_test=test[0] / 255.0)], \
        "dtype float64; this pipeline takes 8-bit"


def five_channels(tmp_path: Path) -> Case:
    train, test = make_images(10, shape=(6, 6, 5)), make_images(4, shape=(6, 6, 5), seed=1)
    return [_npz(tmp_path, x_train=train[0], x_test=test[0])], "images have 5 channels"


def class_name_breaking_labels_txt(tmp_path: Path) -> Case:
    images, labels = make_images(12)
    write_image_folder(tmp_path / "names", images, labels, class_names=("a", "b\x0bc", "d"))
    return [f"data.source=folder:{tmp_path / 'names'}"], "class folder name 'b\\x0bc'"


def single_class_folder(tmp_path: Path) -> Case:
    images, labels = make_images(12)
    write_image_folder(tmp_path / "one", images[labels == 0], labels[labels == 0])
    return [f"data.source=folder:{tmp_path / 'one'}"], "a classifier needs at least 2"


CASES: dict[str, Callable[[Path], Case]] = {case.__name__: case for case in (
    label_out_of_range, labels_not_integers, nan_pixels, inconsistent_shapes, empty_split,
    class_absent_from_train, npz_object_array, idx_wrong_magic, idx_truncated, folder_without_images,
    empty_class_folder, truncated_zero_byte_and_fake_images, sixteen_bit_png, wrong_size_image,
    bad_on_bad_file_value, single_class_folder, float_pixels, five_channels, class_name_breaking_labels_txt,
)}
CLI_CASES = ("label_out_of_range", "npz_object_array", "idx_wrong_magic", "empty_class_folder",
             "truncated_zero_byte_and_fake_images", "sixteen_bit_png", "wrong_size_image", "bad_on_bad_file_value",
             "single_class_folder", "float_pixels")


@pytest.mark.parametrize("name", list(CASES))
def test_each_bad_input_stops_before_training_with_a_message_naming_it(tmp_path, name):
    overrides, expected = CASES[name](tmp_path)
    with pytest.raises(UserError) as caught:  # a bad config value is refused as early as resolve()
        config = resolve("smoke", overrides)
        validate(config.validate, ingest(config.data, tmp_path / "ingest"), tmp_path / "validate")
    message = str(caught.value)
    assert expected in message and "\n" not in message
    assert not (tmp_path / "validate" / "schema.json").exists()


def test_bad_files_are_each_listed_with_a_reason(tmp_path):
    overrides, _ = truncated_zero_byte_and_fake_images(tmp_path)
    with pytest.raises(UserError) as caught:
        ingest(resolve("smoke", overrides).data, tmp_path / "ingest")
    message = str(caught.value)
    for fragment in ("a/cut.png: truncated or corrupt", "b/zero.png: empty file (0 bytes)",
                     "c/page.jpg: not an image"):
        assert fragment in message


FAST_CLI_CASES = ("label_out_of_range", "truncated_zero_byte_and_fake_images", "single_class_folder")


@pytest.mark.parametrize("name", [name if name in FAST_CLI_CASES else pytest.param(name, marks=pytest.mark.slow)
                                  for name in CLI_CASES])
def test_bad_input_through_the_cli_is_exit_2_one_line_and_nothing_finished(tmp_path, name):
    overrides, expected = CASES[name](tmp_path)
    run = run_pipeline_cli(tmp_path / "work", "--preset", "smoke", *overrides)
    assert run.returncode == 2, run.stderr
    error_lines = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and expected in error_lines[0]
    assert "Traceback" not in run.stderr
    if name == "bad_on_bad_file_value":  # refused with the config, before any run folder exists
        assert not run.run_dirs
    else:
        assert run.manifest["status"] == "failed"
        assert {s["name"] for s in run.manifest["stages"]} <= {"ingest", "validate"}
        assert "error: " + run.manifest["error"] == error_lines[0]  # the reason is kept with the run
    for run_dir in run.run_dirs:
        finished_splits = (run_dir / "ingest" / "splits.json").exists()
        assert not (finished_splits and (run_dir / "validate" / "schema.json").exists())
    assert not (tmp_path / "work" / "saved_models").exists()
