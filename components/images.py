"""The one image reader: ingest, `pipeline.predict`, `pipeline.load_model` and the server decode here.

Two readers of the same bytes drift apart: ingest once ignored a photo's EXIF orientation while
predict applied it, so phone photos were trained on sideways and served upright (issue 17). So every
image file or encoded image becomes pixels through `decode_image`, and what needs only an image's
size (ingest choosing its format, the server's pixel limit) reads it with `read_header`, which
opens the file the same way. What they do, and why:

- PNG and JPEG only, whatever the file's name: Pillow's other decoders (GIF, TIFF, BMP, ...) are
  attack surface nothing here needs. A GIF named `.png` is refused everywhere alike.
- 8-bit pixels only: 16-bit and float pixels have no single right mapping to 0..255 (a 12-bit sensor,
  HDR), and Pillow's `convert` would clip them to white without a word.
- Turned upright as the EXIF Orientation tag says (`ImageOps.exif_transpose`), as viewers show it.
- Converted to `L` (1 channel) or `RGB` (3) by Pillow's `convert` (ITU-R 601-2 luma for gray); an
  alpha channel is dropped, keeping the colours under it.
- Resized bilinearly to the size asked for, or refused with its own size where resizing is not
  allowed (`ImageFormat.resize`). Ingest resizes an array source's images (`data.image_size` on
  digits, idx:, npz:, tfds:) with `resize_images`, through the same Pillow call (`_resized`).

It imports no TensorFlow (predict and the server load none: setup.cfg's onnx-consumers contract),
and its functions are top-level, so ingest's spawned worker processes can import them.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from components.source_data import ImageFormat

IMAGE_FORMATS = ("PNG", "JPEG")  # the Pillow decoders used; a JPEG with several pictures (MPO) is a JPEG
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # the names a folder is searched for, in any letter case
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr")
GRAYSCALE_MODES = ("1", "L", "LA")  # become 1 channel when the channels are not given; the others 3
# Bilinear, as both readers always used. Pillow widens the filter when it shrinks, so a photo
# brought down to 28x28 is averaged, not sampled every few pixels.
RESAMPLING = Image.Resampling.BILINEAR
# Orientations whose upright picture has width and height swapped (EXIF 5-8: a quarter turn, with or without a flip).
QUARTER_TURNS = (5, 6, 7, 8)
NOT_PNG_OR_JPEG = "not an image in PNG or JPEG format, or its header is cut off"


class BadImageError(Exception):
    """An image that cannot be used; the message is the reason, for a person (the caller names the file)."""


class WrongSizeError(BadImageError):
    """An image of another size where resizing is not allowed; `size` is its upright (height, width)."""

    def __init__(self, size: tuple[int, int], expected: tuple[int, int]):
        super().__init__(f"{size[0]}x{size[1]} pixels (height x width), not {expected[0]}x{expected[1]}")
        self.size = size


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says: its size as shown upright, and its Pillow mode."""

    height: int
    width: int
    mode: str

    @property
    def channels(self) -> int:
        """1 for a grayscale mode, 3 for the others (palette, RGB, CMYK, ...)."""
        return 1 if self.mode in GRAYSCALE_MODES else 3


def decode_image(source: Path | str | bytes, image_format: ImageFormat) -> np.ndarray:
    """An image file (a path) or an encoded image (bytes) as uint8 pixels [height, width, channels].

    Args:
        source: a PNG or JPEG file, or its bytes.
        image_format: the size and channels wanted, and whether another size is resized or refused.

    Returns:
        The pixels, upright, converted and resized as the module's docstring says.

    Raises:
        BadImageError: the reason the image cannot be used (WrongSizeError for its size).
    """
    with _opened(source) as image:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        size = (image_format.width, image_format.height)
        if image.size != size and not image_format.resize:
            raise WrongSizeError((image.height, image.width), (image_format.height, image_format.width))
        pixels = _resized(_converted(image, image_format.channels), (image_format.height, image_format.width))
        return np.asarray(pixels, dtype=np.uint8).reshape(image_format.height, image_format.width,
                                                          image_format.channels)


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 images [N, height, width, channels] resized to `size`, each as `decode_image` resizes a file.

    Args:
        images: 8-bit pixels with 1 channel (Pillow mode L) or 3 (RGB).
        size: (height, width) of the images returned.

    Returns:
        uint8 pixels [N, size[0], size[1], channels]; `images` itself when it already has that size.

    Raises:
        ValueError: not uint8 images of 1 or 3 channels (Pillow resizes no others alike); callers check first.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"resize_images takes uint8 images of 1 or 3 channels, not {images.dtype} {images.shape}")
    if images.shape[1:3] == tuple(size):
        return images
    resized = np.empty((len(images), *size, images.shape[-1]), dtype=np.uint8)
    for image, out in zip(images, resized):
        pixels = _resized(Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image), size)
        out[...] = np.asarray(pixels, dtype=np.uint8).reshape(out.shape)
    return resized


def read_header(source: Path | str | bytes) -> ImageHeader:
    """An image's upright size and mode from its header, without decoding its pixels (cheap).

    The orientation is read from the EXIF found before the pixels, which is where cameras and Pillow
    put it; a PNG with its eXIf chunk after them is turned upright only by `decode_image`.

    Raises:
        BadImageError: what `decode_image` would refuse before decoding: no file, empty, not PNG or
            JPEG, a header cut off, 16-bit or float pixels, more pixels than Pillow's bomb limit.
    """
    with _opened(source) as image:
        width, height = image.size
        # Image.getexif itself, not PngImageFile's, which decodes the whole image to look for a late eXIf chunk.
        if Image.Image.getexif(image).get(ExifTags.Base.Orientation, 1) in QUARTER_TURNS:
            width, height = height, width
        return ImageHeader(height, width, image.mode)


@contextmanager
def _opened(source: Path | str | bytes) -> Iterator[Image.Image]:
    """`source` opened by Pillow as an 8-bit PNG or JPEG; what goes wrong in the block becomes a BadImageError."""
    try:
        with Image.open(_file(source), formats=IMAGE_FORMATS) as image:
            if image.mode not in EIGHT_BIT_MODES:
                raise BadImageError(f"unsupported mode {image.mode} (16-bit or float pixels); save it as an "
                                    "8-bit PNG or JPEG")
            yield image
    except FileNotFoundError:
        raise BadImageError("no such file") from None
    except IsADirectoryError:
        raise BadImageError("a folder, not an image file") from None
    except PermissionError as error:
        raise BadImageError(f"cannot be opened ({error.strerror})") from None
    except UnidentifiedImageError:
        raise BadImageError(NOT_PNG_OR_JPEG) from None
    except Image.DecompressionBombError as error:
        raise BadImageError(f"too many pixels to decode safely ({error})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise BadImageError(f"truncated or corrupt ({error})") from None


def _file(source: Path | str | bytes) -> Path | BinaryIO:
    """What Pillow opens: the path, or the bytes as a file; an empty one is refused, as Pillow would not say why."""
    if isinstance(source, bytes):
        if not source:
            raise BadImageError("empty file (0 bytes)")
        return io.BytesIO(source)
    path = Path(source)
    if path.is_file() and path.stat().st_size == 0:
        raise BadImageError("empty file (0 bytes)")
    return path


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` at `size` (height, width), resampled as every reader here resamples (RESAMPLING)."""
    width_height = (size[1], size[0])
    return image if image.size == width_height else image.resize(width_height, RESAMPLING)


def _converted(image: Image.Image, channels: int) -> Image.Image:
    """`image` as L (1 channel) or RGB (3); a palette with transparency goes through RGBA, as Pillow asks."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("L" if channels == 1 else "RGB")
