"""An exported version as its consumers see it: raw images in, labels and probabilities out.

Used by `pipeline.predict`, `pipeline.serve` and `pipeline.load_model`. The ONNX and LiteRT backends
(float or int8: `components.model_files`) need only ONNX Runtime or LiteRT, NumPy and Pillow (no
TensorFlow); the SavedModel backend imports TensorFlow when it is chosen. Image files are decoded by
`components.images`, the reader ingest uses too, into the size and channels the model takes (read from
`metadata.json`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from components.bucket_models import local_model
from components.errors import UserError, first_line
from components.images import BadImageError
from components.images import decode_image as decode_image_file
from components.litert_runtime import litert_runner
from components.model_files import BACKENDS, model_file
from components.onnx_session import onnx_session
from components.saved_models import METADATA_FILE, read_metadata, version_dirs
from components.source_data import ImageFormat

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputSpec:
    """What the model takes: `name` float32 (or uint8) pixels 0..255 of shape [batch, height, width, channels]."""

    name: str
    height: int
    width: int
    channels: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.height, self.width, self.channels


@dataclass(frozen=True)
class Prediction:
    """One image's classes, most probable first."""

    labels: tuple[str, ...]
    probabilities: tuple[float, ...]

    @property
    def label(self) -> str:
        return self.labels[0]


class LoadedModel:
    """One exported version, ready to classify images.

    Attributes:
        version_dir: the version folder (`saved_models/<name>/<version>`).
        name, version: the model's name and version number.
        class_names: the classes, in the order of the output's probabilities.
        input: the input tensor's name and image shape.
        backend: which file runs it (`components.model_files`): `onnx` (ONNX Runtime), `savedmodel`
            (TensorFlow), `litert` (LiteRT), `onnx-int8` or `litert-int8`.
    """

    def __init__(self, version_dir: Path, backend: str = "onnx", batch_hint: int = 1):
        if backend not in BACKENDS:
            raise UserError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
        metadata = read_metadata(version_dir)
        self.version_dir, self.backend = version_dir, backend
        self.name, self.version = version_dir.parent.name, int(version_dir.name)
        self.class_names: tuple[str, ...] = tuple(metadata["class_names"])
        _, height, width, channels = metadata["input"]["shape"]
        self.input = InputSpec(metadata["input"]["name"], height, width, channels)
        self.output_name: str = metadata["output"]["name"]
        self.metadata = metadata
        check_file_exists(version_dir, backend, metadata)
        self._run = file_runner(version_dir, backend, self.input.name, self.output_name, len(self.class_names),
                                batch_hint)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities [batch, classes] (float32) for raw pixels [batch, height, width, channels], 0..255.

        Raises:
            UserError: the array's shape is not [batch, height, width, channels] of this model, or it
                holds values that are not finite numbers from 0 to 255.
        """
        pixels = np.asarray(pixels)
        check_pixels(pixels, self.input)
        return self._run(pixels.astype(np.float32, copy=False))

    def predict(self, images: Sequence[Path | str | bytes | np.ndarray] | np.ndarray,
                top_k: int | None = None) -> list[Prediction]:
        """Classify images: paths or encoded bytes of PNG/JPEG files, or raw pixel arrays.

        Args:
            images: image files, encoded images, arrays [height, width, channels] of this model's
                shape, or one array [batch, height, width, channels].
            top_k: how many classes each prediction keeps (all by default), most probable first.

        Returns:
            One prediction per image, in order.

        Raises:
            UserError: a file that is not a readable image, or an array of another shape.
        """
        if isinstance(images, np.ndarray) and images.ndim == 4:
            pixels = images
        else:
            pixels = np.stack([to_pixels(image, self.input) for image in images]) if len(images) else \
                np.zeros((0, *self.input.shape), np.uint8)
        return ranked(self.probabilities(pixels), self.class_names, top_k)


def ranked(probabilities: np.ndarray, class_names: Sequence[str], top_k: int | None = None) -> list[Prediction]:
    """Each row's classes sorted by probability, best first, keeping `top_k` (all if None)."""
    keep = len(class_names) if top_k is None else max(1, min(top_k, len(class_names)))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :keep]
    return [Prediction(tuple(class_names[i] for i in row), tuple(float(p) for p in probabilities[n, row]))
            for n, row in enumerate(order)]


def load_exported(model_or_version_dir: Path | str, backend: str = "onnx", batch_hint: int = 1) -> LoadedModel:
    """The exported version at `model_or_version_dir`, or the newest version of the model folder there
    that loads: a broken or half-copied newer version is skipped with a warning, as the server does. A
    newer version that lacks the backend's file is not skipped: an older model would answer in its place.

    A bucket's URL (`s3://BUCKET/models/digits[/3]`, any fsspec URL) is fetched into the local cache first,
    the version it names or the newest complete version of the model folder it names
    (`components.bucket_models.local_model`); only that version is fetched, so it is not passed over.

    Raises:
        UserError: the folder or URL holds no exported version, the version given (or every version)
            cannot be loaded, or the bucket cannot be read.
        MissingModelFile: the version (the newest, for a model folder) lacks the backend's file.
    """
    path = local_model(model_or_version_dir)
    if (path / METADATA_FILE).is_file():
        return _load(path, backend, batch_hint)
    versions = _versions(path)
    for version_dir in reversed(versions[1:]):
        try:
            return _load(version_dir, backend, batch_hint)
        except MissingModelFile:
            raise
        except UserError as error:
            log.warning("%s; trying the version before it", error)
    return _load(versions[0], backend, batch_hint)


def _load(version_dir: Path, backend: str, batch_hint: int) -> LoadedModel:
    """One version folder, loaded; whatever breaks while reading it becomes one line naming the folder."""
    try:
        return LoadedModel(version_dir, backend, batch_hint)
    except UserError:
        raise
    except Exception as error:  # ONNX Runtime, TensorFlow and JSON each raise their own types for a broken file
        reason = first_line(error)[:200]
        raise UserError(f"{version_dir}: cannot be loaded ({type(error).__name__}: {reason}); export it again "
                        "or remove the folder") from None


def version_dir_of(path: Path) -> Path:
    """`path` if it is a version folder, else the newest version of the model folder `path`."""
    if (path / METADATA_FILE).is_file():
        return path
    return _versions(path)[-1]


def _versions(model_dir: Path) -> list[Path]:
    """The exported versions of a model folder, oldest first; none is the user's mistake, said in one line."""
    versions = version_dirs(model_dir)
    if not versions:
        raise UserError(f"{model_dir}: not an exported model (no {METADATA_FILE}) nor a model folder with "
                        "numbered versions; give e.g. saved_models/digits or saved_models/digits/1")
    return versions


def to_pixels(image: Path | str | bytes | np.ndarray, spec: InputSpec) -> np.ndarray:
    """An image file, encoded image or array as uint8 pixels [height, width, channels] of the model's shape.

    Files and encoded images are decoded by `decode_image`. Arrays must already have the shape.

    Raises:
        UserError: not a usable image (naming the file), or an array of another shape.
    """
    if isinstance(image, np.ndarray):
        if image.shape != spec.shape:
            raise UserError(f"an image array of shape {list(image.shape)}; this model takes {list(spec.shape)}")
        return image
    return decode_image(image, spec)


def decode_image(source: Path | str | bytes, spec: InputSpec) -> np.ndarray:
    """Decode a PNG/JPEG (a path or its bytes) into uint8 pixels of the model's shape, exactly as ingest
    decodes a training image (`components.images.decode_image`): upright as its EXIF orientation says,
    converted to the model's channels, resized bilinearly to its size.

    Raises:
        UserError: the file (or "the encoded image") and why it cannot be used.
    """
    try:
        return decode_image_file(source, ImageFormat(spec.height, spec.width, spec.channels, resize=True))
    except BadImageError as error:
        name = "the encoded image" if isinstance(source, bytes) else str(source)
        raise UserError(f"{name}: {error}") from None


def check_pixels(pixels: np.ndarray, spec: InputSpec) -> None:
    """Refuse arrays the model cannot take: another shape, or values that are not finite numbers in 0..255."""
    if pixels.ndim != 4 or pixels.shape[1:] != spec.shape:
        raise UserError(f"pixels of shape {list(pixels.shape)}; this model takes [batch, {spec.height}, "
                        f"{spec.width}, {spec.channels}]")
    if pixels.dtype.kind not in "uif":  # unsigned, signed, float: not bool, complex, text or objects
        raise UserError(f"pixels of type {pixels.dtype}; give numbers from 0 to 255")
    if pixels.size and (not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 255):
        raise UserError("pixels must be finite numbers from 0 to 255 (raw pixels; the model normalizes them)")


class MissingModelFile(UserError):
    """The version lacks the file a backend loads: another version or backend is the user's choice, never made
    for them (an older version would answer for a newer one)."""


def check_file_exists(version_dir: Path, backend: str, metadata: dict) -> None:
    """Refuse, in one line saying why, a backend whose file this version lacks (an int8 file left out, say).

    Raises:
        MissingModelFile: the file is not in the version folder.
    """
    file = model_file(backend)
    if file.path(version_dir).is_file():
        return
    present = [each for each in BACKENDS if model_file(each).path(version_dir).is_file()]
    left_out = (metadata.get("left_out") or {}).get(file.file_name)
    why = (f"export left it out: {left_out}" if left_out else
           "exported without export.int8=true" if file.int8 and not metadata.get("int8") else
           "exported before this file was written, or removed")
    raise MissingModelFile(f"{version_dir} has no {file.file_name} ({why}); choose another backend: "
                           f"{', '.join(present)}")


def file_runner(version_dir: Path, backend: str, input_name: str, output_name: str, num_classes: int,
                batch_hint: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """A function from float32 pixels [batch, height, width, channels] to probabilities, by the backend's file."""
    file = model_file(backend)
    if file.runtime == "LiteRT":
        return litert_runner(file.path(version_dir), input_name, output_name, num_classes, batch_hint)
    if file.runtime == "ONNX Runtime":
        return _onnx_runner(file.path(version_dir), input_name, output_name, num_classes, batch_hint)
    from components.saved_model_backend import saved_model_runner

    return saved_model_runner(version_dir, input_name, output_name, num_classes)


def _onnx_runner(onnx_path: Path, input_name: str, output_name: str, num_classes: int,
                 batch_hint: int) -> Callable[[np.ndarray], np.ndarray]:
    session = onnx_session(onnx_path, batch_hint)

    def run(pixels: np.ndarray) -> np.ndarray:
        if not len(pixels):
            return np.zeros((0, num_classes), np.float32)
        return session.run([output_name], {input_name: pixels})[0]

    return run
