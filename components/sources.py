"""Readers for the data sources ingest understands: `digits`, `idx:DIR` and `tfds:NAME`.

Every reader returns raw pixel values (uint8, 0..255, shape [N, H, W, C]) and integer labels,
so the rest of the pipeline, and the exported model's users, see one convention.
"""

from __future__ import annotations

import gzip
import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

log = logging.getLogger(__name__)

OFFLINE_SOURCES = (
    "data.source=digits (scikit-learn's bundled digits) or "
    "data.source=idx:/usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist)"
)

# IDX type codes (http://yann.lecun.com/exdb/mnist/ format description) to NumPy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class SourceData:
    """A dataset as read from its source; `test_*` are None when the source has no test split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray | None
    test_labels: np.ndarray | None
    class_names: tuple[str, ...]


def read_source(source: str, tfds_data_dir: str = "", download: bool = False) -> SourceData:
    """Read the dataset named by `data.source`.

    Raises:
        UserError: unknown source kind, missing or malformed data.
    """
    kind, _, arg = source.partition(":")
    if kind == "digits" and not arg:
        return read_digits()
    if kind == "idx" and arg:
        return read_idx_dir(Path(arg))
    if kind == "tfds" and arg:
        return read_tfds(arg, tfds_data_dir, download)
    raise UserError(
        f"data.source={source!r} is not a known source; use digits, idx:DIR or tfds:NAME "
        f"(offline: {OFFLINE_SOURCES})"
    )


def read_digits() -> SourceData:
    """scikit-learn's bundled 8x8 digits (1,797 images), rescaled from 0..16 to 0..255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., np.newaxis]
    names = tuple(str(name) for name in digits.target_names)
    return SourceData(images, digits.target.astype(np.int64), None, None, names)


def read_idx_dir(data_dir: Path) -> SourceData:
    """MNIST-format files `train-images*`, `train-labels*`, `t10k-images*`, `t10k-labels*` in `data_dir`."""
    if not data_dir.is_dir():
        raise UserError(f"data.source=idx:{data_dir}: no such folder; point it at a folder of MNIST-format files")
    arrays = {prefix: read_idx(_find_idx_file(data_dir, prefix)) for prefix in
              ("train-images", "train-labels", "t10k-images", "t10k-labels")}
    num_classes = int(max(arrays["train-labels"].max(initial=0), arrays["t10k-labels"].max(initial=0))) + 1
    names = tuple(str(i) for i in range(num_classes))  # IDX files carry no names: see data.class_names
    return SourceData(
        _with_channels(arrays["train-images"]), arrays["train-labels"].astype(np.int64),
        _with_channels(arrays["t10k-images"]), arrays["t10k-labels"].astype(np.int64), names,
    )


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (raw or gzip-compressed) into an array of its declared type and shape."""
    data = _read_bytes(path)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_DTYPES:
        raise UserError(f"{path}: not an IDX file (magic number {data[:4].hex() or 'missing'}); "
                        "expected MNIST-format data, e.g. train-images-idx3-ubyte.gz")
    ndim = data[3]
    header_size = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = math.prod(shape) * dtype.itemsize
    if len(data) < header_size or len(data) - header_size != expected:
        raise UserError(f"{path}: truncated or padded IDX file: header says shape {shape} "
                        f"({expected} bytes of data), file has {max(len(data) - header_size, 0)}; "
                        "download or copy it again")
    return np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape).astype(dtype.newbyteorder("="))


def read_tfds(name: str, data_dir: str, download: bool) -> SourceData:
    """A TFDS image-classification dataset with `image` and `label` features.

    Without `download` nothing touches the network, so an unprepared dataset fails in seconds
    instead of after TFDS's minutes of retries.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        raise UserError(f"data.source=tfds:{name}: TFDS has no dataset of that name; "
                        f"check the spelling (e.g. tfds:mnist), or offline use {OFFLINE_SOURCES}") from None
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise UserError(f"data.source=tfds:{name}: has no 'image' and 'label' features; "
                        "choose an image-classification dataset such as mnist or fashion_mnist")
    if download:
        _download_and_prepare(builder, name)
    train_images, train_labels = _tfds_split(builder, name, "train")
    test_images, test_labels = (_tfds_split(builder, name, "test") if "test" in builder.info.splits
                                else (None, None))
    return SourceData(train_images, train_labels, test_images, test_labels, tuple(features["label"].names))


def _download_and_prepare(builder, name: str) -> None:
    try:
        builder.download_and_prepare()
    except Exception as error:  # network and extraction failures come in many types
        raise UserError(f"data.source=tfds:{name}: could not download or prepare it ({_first_line(error)}); "
                        f"offline, use {OFFLINE_SOURCES}") from None


def _tfds_split(builder, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds

    try:
        dataset = builder.as_dataset(split=split, batch_size=4096, as_supervised=True)
    except AssertionError:  # TFDS's way of saying "not prepared in data_dir"
        raise UserError(f"data.source=tfds:{name}: not prepared in {builder.data_dir}; set data.download=true "
                        f"to download it, data.tfds_data_dir=DIR where it is prepared, or offline use "
                        f"{OFFLINE_SOURCES}") from None
    batches = list(tfds.as_numpy(dataset))
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return _with_channels(images), labels.astype(np.int64)


def _find_idx_file(data_dir: Path, prefix: str) -> Path:
    matches = sorted(p for p in data_dir.glob(f"{prefix}*") if p.is_file())
    if not matches:
        raise UserError(f"{data_dir}: no {prefix}* file; an idx: folder needs train-images, train-labels, "
                        "t10k-images and t10k-labels files (raw or .gz)")
    return matches[0]


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"{path}: cannot read it ({error}); download or copy it again") from None


def _with_channels(images: np.ndarray) -> np.ndarray:
    return images[..., np.newaxis] if images.ndim == 3 else images


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
