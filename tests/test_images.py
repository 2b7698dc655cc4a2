"""One image reader for training and serving: ingest, predict, the API and the server see the same pixels.

Each image is read through every path a user's photo can take: ingest's (the folder listing and
`decode_chunks`, or a real ingest), predict's and the API's (`components.loaded_model.to_pixels`, which
`LoadedModel.predict` and `pipeline.predict` call), and the server's (`{"b64": ...}` bodies).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image, ImageOps

from components.config import DataConfig
from components.errors import UserError
from components.image_folder import decode_chunks, list_image_folder
from components.images import NOT_PNG_OR_JPEG
from components.ingest import ingest
from components.loaded_model import InputSpec, to_pixels
from components.shards.layout import split_labels
from components.shards.record_reader import read_images_at
from components.source_data import ImageFiles, ImageFormat
from pipeline.serving.app import ServeSettings
from pipeline.serving.errors import BadRequest
from pipeline.serving.limits import RequestBudget, RequestLimits
from pipeline.serving.tensors import b64_image

# What a viewer does with each EXIF orientation that turns a picture a quarter, written with NumPy
# alone so that the expectation does not come from the Pillow function under test.
UPRIGHT = {
    5: lambda raw: raw.transpose(1, 0, 2),
    6: lambda raw: np.rot90(raw, -1),
    7: lambda raw: np.rot90(raw, 2).transpose(1, 0, 2),
    8: lambda raw: np.rot90(raw, 1),
}


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def tagged_jpeg(pixels: np.ndarray, orientation: int) -> bytes:
    """A JPEG of `pixels` as stored, with an EXIF Orientation tag saying how to turn it upright."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(pixels), "JPEG", exif=exif, quality=95)


def stored_pixels(data: bytes) -> np.ndarray:
    """The pixels as stored in the file, the orientation tag ignored."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def asymmetric_pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    """RGB pixels no turn or flip maps onto themselves: a gradient plus noise."""
    rows, cols = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(seed).integers(0, 40, (height, width, 3))
    return (np.stack([rows * 20, cols * 12, rows * cols], axis=-1) % 200 + noise).astype(np.uint8)


def ingest_reads(path: Path, image_format: ImageFormat) -> np.ndarray | str:
    """What ingest stores for one file (its pixels), or the reason it gives for leaving the file out."""
    (chunk,) = decode_chunks(ImageFiles((path,), np.zeros(1, np.int64)), np.arange(1), image_format)
    return chunk.bad_files[0][1] if chunk.bad_files else chunk.images[0]


def predict_reads(path: Path, spec: InputSpec) -> np.ndarray | str:
    """What `pipeline.predict` and `load_model(...).predict` feed the model for a file, or their reason."""
    try:
        return to_pixels(path, spec)
    except UserError as error:
        return _reason(str(error), f"{path}: ")


def serve_reads(data: bytes, spec: InputSpec) -> np.ndarray | str:
    """What the server feeds the model for `{"b64": ...}` of the file's bytes, or its reason."""
    try:
        budget = RequestBudget(RequestLimits(1, ServeSettings.max_decoded_pixels))  # the server's default
        return b64_image({"b64": base64.b64encode(data).decode()}, spec, '"instances"[0]', budget)
    except BadRequest as error:
        return _reason(str(error), '"instances"[0]: ')
    except UserError as error:
        return _reason(str(error), "the encoded image: ")


def _reason(message: str, prefix: str) -> str:
    assert message.startswith(prefix), message
    return message[len(prefix):]


@pytest.mark.parametrize("orientation", [6, 8])
@pytest.mark.parametrize("image_size", [(), (5, 7)], ids=["kept", "resized"])
def test_an_exif_rotated_jpeg_is_the_same_upright_pixels_at_ingest_predict_and_serve(tmp_path, orientation,
                                                                                    image_size):
    data = tagged_jpeg(asymmetric_pixels(8, 14), orientation)
    with Image.open(io.BytesIO(data)) as image:
        assert ImageOps.exif_transpose(image).size == (8, 14) != image.size  # the tag does turn it
    path = tmp_path / "photos" / "cat" / "phone.jpg"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    folder = list_image_folder(tmp_path / "photos", image_size, 3)
    height, width = image_size or (14, 8)  # the size as a viewer shows it, taken from the header
    assert (folder.image_format.height, folder.image_format.width) == (height, width)
    spec = InputSpec("pixels", height, width, 3)
    at_ingest = ingest_reads(path, folder.image_format)
    assert isinstance(at_ingest, np.ndarray) and at_ingest.shape == (height, width, 3)
    np.testing.assert_array_equal(predict_reads(path, spec), at_ingest)
    np.testing.assert_array_equal(serve_reads(data, spec), at_ingest)
    upright = Image.fromarray(UPRIGHT[orientation](stored_pixels(data)))
    np.testing.assert_array_equal(at_ingest, np.asarray(upright.resize((width, height), Image.Resampling.BILINEAR)))


def test_a_folder_of_rotated_photos_is_ingested_as_a_viewer_sees_it(tmp_path):
    labels = np.repeat(np.arange(3), 4)
    for index, label in enumerate(labels):
        orientation = 5 + index % 4
        data = tagged_jpeg(asymmetric_pixels(6, 10, seed=index), orientation)
        for folder in ("tagged", "upright"):
            (tmp_path / folder / "abc"[label]).mkdir(parents=True, exist_ok=True)
        (tmp_path / "tagged" / "abc"[label] / f"{index:02d}.jpg").write_bytes(data)
        upright = UPRIGHT[orientation](stored_pixels(data))  # the same photo saved upright, without a tag
        Image.fromarray(upright).save(tmp_path / "upright" / "abc"[label] / f"{index:02d}.png")
    stored = {}
    for folder in ("tagged", "upright"):
        splits = ingest(DataConfig(source=f"folder:{tmp_path / folder}", val_fraction=0.25), tmp_path / f"{folder}_out")
        assert splits.image_shape == (10, 6, 3)  # upright: 10 high, 6 wide
        stored[folder] = {split: list(zip(map(bytes, read_images_at(splits, split, range(count))),
                                          split_labels(splits, split).tolist()))
                          for split, count in splits.num_examples.items()}  # read without TensorFlow
    assert stored["tagged"] == stored["upright"]


def _png(mode: str, **options) -> Callable[[np.ndarray], bytes]:
    return lambda rgba: encode(Image.fromarray(rgba, "RGBA").convert(mode), "PNG", **options)


# Every kind of file a user may bring, as bytes made from 12x10 RGBA pixels, and what the readers say:
# None for pixels, else the start of the reason they give.
IMAGE_KINDS: dict[str, tuple[Callable[[np.ndarray], bytes], str | None]] = {
    "mode 1": (_png("1"), None),
    "mode L": (_png("L"), None),
    "mode LA": (_png("LA"), None),
    "mode P": (_png("P"), None),
    "mode P with transparency": (lambda rgba: encode(Image.fromarray(rgba, "RGBA").quantize(8), "PNG"), None),
    "mode RGB, PNG": (_png("RGB"), None),
    "mode RGB, JPEG": (lambda rgba: encode(Image.fromarray(rgba[..., :3]), "JPEG"), None),
    "mode L, JPEG": (lambda rgba: encode(Image.fromarray(rgba[..., 0]), "JPEG"), None),
    "mode RGBA": (_png("RGBA"), None),
    "mode CMYK, JPEG": (lambda rgba: encode(Image.fromarray(rgba, "CMYK"), "JPEG"), None),
    "EXIF-rotated JPEG": (lambda rgba: tagged_jpeg(rgba[..., :3].transpose(1, 0, 2), 8), None),  # stored 10x12
    "mode I;16": (lambda rgba: encode(Image.fromarray(rgba[..., 0].astype(np.uint16) * 257), "PNG"),
                  "unsupported mode I;16 (16-bit or float pixels); save it as an 8-bit PNG or JPEG"),
    "mode F, a TIFF named .png": (lambda rgba: encode(Image.fromarray(rgba[..., 0].astype(np.float32)), "TIFF"),
                                  NOT_PNG_OR_JPEG),
    "a GIF named .png": (lambda rgba: encode(Image.fromarray(rgba[..., 0]), "GIF"), NOT_PNG_OR_JPEG),
    "a PNG cut in half": (lambda rgba: (data := _png("RGB")(rgba))[: len(data) // 2], "truncated or corrupt ("),
    "a JPEG cut in half": (lambda rgba: (data := IMAGE_KINDS["mode RGB, JPEG"][0](rgba))[: len(data) // 2],
                           "truncated or corrupt ("),
    "zero bytes": (lambda rgba: b"", "empty file (0 bytes)"),
    "text named .png": (lambda rgba: b"label: cat\n" * 20, NOT_PNG_OR_JPEG),
}


@pytest.mark.filterwarnings("error")  # e.g. Pillow's about converting a palette with transparency straight to RGB
@pytest.mark.parametrize("shape", [(12, 10, 1), (12, 10, 3), (5, 7, 3), (5, 7, 1)],
                         ids=["gray", "rgb", "rgb resized", "gray resized"])
def test_every_kind_of_image_gives_the_same_pixels_or_the_same_reason_at_ingest_predict_and_serve(tmp_path, shape):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (12, 10, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rng.random((12, 10)) < 0.3, 0, 255)  # some transparent pixels
    resize = shape[:2] != (12, 10)
    for kind, (make, refusal) in IMAGE_KINDS.items():
        data = make(rgba)
        path = tmp_path / f"{kind}.png"
        path.write_bytes(data)
        spec = InputSpec("pixels", *shape)
        at_ingest = ingest_reads(path, ImageFormat(*shape, resize=resize))
        at_predict, at_serve = predict_reads(path, spec), serve_reads(data, spec)
        if refusal is None:
            assert isinstance(at_ingest, np.ndarray) and at_ingest.shape == shape, (kind, at_ingest)
            np.testing.assert_array_equal(at_predict, at_ingest, err_msg=kind)
            np.testing.assert_array_equal(at_serve, at_ingest, err_msg=kind)
        else:
            assert isinstance(at_ingest, str) and at_ingest.startswith(refusal), (kind, at_ingest)
            assert at_predict == at_serve == at_ingest, kind


def test_pixels_are_converted_as_pillow_converts_without_transparency(tmp_path):
    """The conversion itself: gray is ITU-R 601-2 luma, alpha is dropped keeping the colour under it."""
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 0  # pure red, fully transparent
    path = tmp_path / "red.png"
    path.write_bytes(_png("RGBA")(rgba))
    assert (ingest_reads(path, ImageFormat(2, 2, 1, resize=False)) == 76).all()  # 0.299 * 255
    assert (ingest_reads(path, ImageFormat(2, 2, 3, resize=False)) == [255, 0, 0]).all()
