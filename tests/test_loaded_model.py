"""components/loaded_model.py: an export as its consumers load it, fed files, bytes and arrays."""

from __future__ import annotations

import io
import re
import shutil

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from components.errors import UserError
from components.loaded_model import InputSpec, check_pixels, decode_image, load_exported, ranked, version_dir_of
from tests.conftest import read_split

GRAY = InputSpec("pixels", 8, 8, 1)
RGB = InputSpec("pixels", 4, 6, 3)


def _png(array: np.ndarray, mode: str, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format=fmt)
    return buffer.getvalue()


def test_grayscale_and_rgb_files_become_the_models_channels_and_size():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    assert np.array_equal(decode_image(_png(gray, "L"), GRAY)[..., 0], gray)  # same size: untouched
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255  # pure red: luma 0.299 * 255
    assert np.all(decode_image(_png(rgb, "RGB"), GRAY) == 76)
    as_rgb = decode_image(_png(gray, "L"), RGB)
    assert as_rgb.shape == (4, 6, 3) and np.array_equal(as_rgb[..., 0], as_rgb[..., 2])  # gray copied to 3
    jpeg = decode_image(_png(np.full((30, 20, 3), 200, np.uint8), "RGB", "JPEG"), GRAY)
    assert jpeg.shape == (8, 8, 1) and abs(int(jpeg.mean()) - 200) <= 2  # resized from 20x30


def test_unreadable_images_are_user_errors_naming_the_file_and_saying_why(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "cut.png").write_bytes(_png(np.zeros((8, 8), np.uint8), "L")[:30])
    for name, reason in [("notes.png", "not an image in PNG or JPEG format"), ("empty.png", "empty file (0 bytes)"),
                         ("cut.png", "not an image in PNG or JPEG format, or its header is cut off"),
                         ("missing.png", "no such file")]:
        with pytest.raises(UserError, match=f"^{tmp_path / name}: {re.escape(reason)}"):
            decode_image(tmp_path / name, GRAY)
    with pytest.raises(UserError, match="a folder, not an image file"):
        decode_image(tmp_path, GRAY)
    with pytest.raises(UserError, match="^the encoded image: not an image in PNG or JPEG format"):
        decode_image(b"\x89PNG garbage", GRAY)


@pytest.mark.parametrize("pixels, message", [
    (np.zeros((2, 8, 8)), "shape"),
    (np.zeros((2, 8, 8, 3)), "shape"),
    (np.full((1, 8, 8, 1), np.nan), "finite"),
    (np.full((1, 8, 8, 1), np.inf), "finite"),
    (np.full((1, 8, 8, 1), 256.0), "0 to 255"),
    (np.full((1, 8, 8, 1), -1), "0 to 255"),
    (np.full((1, 8, 8, 1), "a"), "type"),
    (np.zeros((1, 8, 8, 1), complex), "type"),
    (np.zeros((1, 8, 8, 1), bool), "type"),
])
def test_pixels_a_model_cannot_take_are_refused(pixels, message):
    with pytest.raises(UserError, match=message):
        check_pixels(pixels, GRAY)


def test_ranked_sorts_each_row_best_first_and_keeps_top_k():
    probabilities = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    first, second = ranked(probabilities, ("a", "b", "c"), top_k=2)
    assert first.labels == ("b", "c") and first.probabilities == pytest.approx((0.7, 0.2))
    assert second.label == "a" and len(ranked(probabilities, ("a", "b", "c"))[0].labels) == 3


def test_a_model_folder_means_its_newest_version_that_loads(smoke_run, tmp_path, caplog):
    model_dir = tmp_path / "digits"
    shutil.copytree(smoke_run.workdir / "saved_models" / "digits" / "1", model_dir / "9")
    shutil.copytree(model_dir / "9", model_dir / "10")  # 10 > 9: numbers, not text, are compared
    (model_dir / "²").mkdir()  # "²".isdigit() is True: no version for all that
    (model_dir / "11").mkdir()  # no metadata.json: no export
    assert version_dir_of(model_dir) == model_dir / "10" and load_exported(model_dir).version == 10
    (model_dir / "10" / "model.onnx").write_bytes(b"half a copy")
    assert load_exported(model_dir).version == 9  # the broken newest is skipped, as the server does
    assert "digits/10: cannot be loaded" in caplog.text
    with pytest.raises(UserError, match="10: cannot be loaded .*export it again or remove the folder"):
        load_exported(model_dir / "10")
    with pytest.raises(UserError, match="not an exported model"):
        load_exported(tmp_path)


def test_predict_on_a_model_folder_skips_a_broken_newest_version(smoke_run, tmp_path, capsys):
    from pipeline.predict import main

    model_dir = tmp_path / "digits"
    shutil.copytree(smoke_run.workdir / "saved_models" / "digits" / "1", model_dir / "1")
    shutil.copytree(model_dir / "1", model_dir / "2")
    (model_dir / "2" / "model.onnx").write_bytes(b"")
    (tmp_path / "seven.png").write_bytes(_png(np.zeros((8, 8), np.uint8), "L"))
    assert main([str(model_dir), str(tmp_path / "seven.png"), "--format", "csv"]) == 0
    assert main([str(model_dir / "2"), str(tmp_path / "seven.png")]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {model_dir / '2'}: cannot be loaded")


def test_only_8_bit_png_and_jpeg_are_read_and_exif_orientation_is_applied(tmp_path):
    sixteen_bit = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).save(sixteen_bit, format="PNG")
    with pytest.raises(UserError, match="unsupported mode I;16 .*save it as an 8-bit PNG or JPEG"):  # not white
        decode_image(sixteen_bit.getvalue(), GRAY)
    with pytest.raises(UserError, match="not an image in PNG or JPEG format"):
        decode_image(_png(np.zeros((8, 8), np.uint8), "L", "GIF"), GRAY)
    tall = np.zeros((8, 4), np.uint8)
    tall[:, :2] = 255  # left half white
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to show upright
    Image.fromarray(tall, "L").save(buffer, format="JPEG", exif=exif, quality=100)
    upright = decode_image(buffer.getvalue(), InputSpec("pixels", 4, 8, 1))[..., 0]
    assert upright[:2].mean() > 200 and upright[2:].mean() < 50  # the white half is now on top


def test_both_backends_and_onnx_runtime_itself_agree_on_files_and_arrays(smoke_run, tmp_path):
    images = read_split(smoke_run.run_dir / "ingest", limit=12)[0]
    onnx, saved = load_exported(smoke_run.workdir / "saved_models" / "digits"), None
    session = ort.InferenceSession(str(onnx.version_dir / "model.onnx"))
    direct = session.run(["probabilities"], {"pixels": images.astype(np.float32)})[0]
    np.testing.assert_allclose(onnx.probabilities(images), direct, atol=1e-6)
    paths = []
    for index, image in enumerate(images):
        paths.append(tmp_path / f"{index}.png")
        paths[-1].write_bytes(_png(image[..., 0], "L"))
    from_files = onnx.predict(paths)
    assert [p.label for p in from_files] == [onnx.class_names[i] for i in direct.argmax(axis=1)]
    assert [p.probabilities[0] for p in from_files] == pytest.approx(direct.max(axis=1).tolist(), abs=1e-6)
    saved = load_exported(onnx.version_dir, backend="savedmodel")
    np.testing.assert_allclose(saved.probabilities(images), direct, atol=1e-5)
    with pytest.raises(UserError, match="backend 'tflite'"):
        load_exported(onnx.version_dir, backend="tflite")


def test_an_image_past_pillows_decompression_bomb_limit_is_a_user_error(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 8x8 = 64 pixels: past twice the limit, Pillow refuses
    with pytest.raises(UserError, match="the encoded image: too many pixels to decode safely"):
        decode_image(_png(np.zeros((8, 8), np.uint8), "L"), GRAY)
