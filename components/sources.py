"""Readers for the data sources ingest understands: `digits`, `idx:DIR`, `npz:FILE`, `folder:DIR`, `tfds:NAME`.

DIR and FILE may be bucket URLs (`s3://`, `gs://`, any fsspec protocol; `components/remote.py`).

Every reader returns raw pixel values (uint8, 0..255, shape [N, H, W, C]) and integer labels,
so the rest of the pipeline, and the exported model's users, see one convention. The `folder:`
reader returns the listed files instead, which ingest decodes a chunk at a time.
"""

from __future__ import annotations

import gzip
import logging
import math
import socket
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import numpy as np

from components import remote
from components.config import DataConfig
from components.errors import UserError, first_line
from components.remote import is_url
from components.source_data import ImageFolder, SourceData

log = logging.getLogger(__name__)

OFFLINE_SOURCES = (
    "data.source=digits (scikit-learn's bundled digits) or "
    "data.source=idx:/usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist)"
)

# IDX type codes (http://yann.lecun.com/exdb/mnist/ format description) to NumPy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_source(config: DataConfig) -> SourceData | ImageFolder:
    """Read the dataset named by `config.source`; a `folder:` source is only listed, not decoded.

    Raises:
        UserError: unknown source kind, missing or malformed data.
    """
    kind, _, arg = config.source.partition(":")
    if kind == "digits" and not arg:
        return read_digits()
    if kind == "idx" and arg:
        return read_idx_bucket(arg) if is_url(arg) else read_idx_dir(Path(arg))
    if kind == "npz" and arg:
        return read_npz(arg if is_url(arg) else Path(arg))
    if kind == "folder" and arg:
        from components.image_folder import list_image_folder  # Pillow, only when needed

        return list_image_folder(arg if is_url(arg) else Path(arg), config.image_size, config.channels)
    if kind == "tfds" and arg:
        return read_tfds(arg, config.tfds_data_dir, config.download)
    raise UserError(
        f"data.source={config.source!r} is not a known source; use digits, idx:DIR, npz:FILE, folder:DIR "
        f"or tfds:NAME (offline: {OFFLINE_SOURCES})"
    )


def read_digits() -> SourceData:
    """scikit-learn's bundled 8x8 digits (1,797 images), rescaled from 0..16 to 0..255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., np.newaxis]
    names = tuple(str(name) for name in digits.target_names)
    return SourceData(images, digits.target.astype(np.int64), None, None, names)


IDX_PREFIXES = ("train-images", "train-labels", "t10k-images", "t10k-labels")


def read_idx_dir(data_dir: Path) -> SourceData:
    """MNIST-format files `train-images*`, `train-labels*`, `t10k-images*`, `t10k-labels*` in `data_dir`."""
    if not data_dir.is_dir():
        raise UserError(f"data.source=idx:{data_dir}: no such folder; point it at a folder of MNIST-format files")
    names = [path.name for path in data_dir.iterdir() if path.is_file()]
    arrays = {prefix: read_idx(data_dir / _find_idx_file(str(data_dir), names, prefix)) for prefix in IDX_PREFIXES}
    return _idx_data(arrays, f"idx:{data_dir}")


def read_idx_bucket(url: str) -> SourceData:
    """The same four MNIST-format files in a bucket folder (`s3://`, `gs://`, ...), streamed as they are parsed."""
    names = [item.name for item in remote.list_objects(url) if "/" not in item.name]
    arrays = {prefix: read_idx_object(remote.join(url, _find_idx_file(url, names, prefix)))
              for prefix in IDX_PREFIXES}
    return _idx_data(arrays, f"idx:{url}")


def _idx_data(arrays: dict[str, np.ndarray], source: str) -> SourceData:
    names = _numbered_classes(arrays["train-labels"], arrays["t10k-labels"], source)
    return SourceData(
        _with_channels(arrays["train-images"]), arrays["train-labels"].astype(np.int64),
        _with_channels(arrays["t10k-images"]), arrays["t10k-labels"].astype(np.int64), names,
    )


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (raw or gzip-compressed) into an array of its declared type and shape.

    The payload is read straight into the result, so the file is never held twice in memory.
    """
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as f:
            return _read_idx_stream(f, path)
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"{path}: cannot read it ({error}); download or copy it again") from None


def read_idx_object(url: str) -> np.ndarray:
    """One IDX object in a bucket, parsed as it downloads (gunzipped on the way when its name ends in .gz)."""
    with remote.store_errors(url), remote.open_binary(url) as raw:
        try:
            with (gzip.GzipFile(fileobj=raw, mode="rb") if url.endswith(".gz") else raw) as f:
                return _read_idx_stream(f, url)
        except (gzip.BadGzipFile, EOFError, zlib.error) as error:
            raise UserError(f"{url}: cannot read it ({error}); upload it again") from None


def _read_idx_stream(f: BinaryIO, path: Path | str) -> np.ndarray:
    magic = f.read(4)
    if len(magic) < 4 or magic[:2] != b"\x00\x00" or magic[2] not in _IDX_DTYPES:
        raise UserError(f"{path}: not an IDX file (magic number {magic.hex() or 'missing'}); "
                        "expected MNIST-format data, e.g. train-images-idx3-ubyte.gz")
    dims = f.read(4 * magic[3])
    shape = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(len(dims) // 4))
    dtype = np.dtype(_IDX_DTYPES[magic[2]])
    array = np.empty(shape if len(dims) == 4 * magic[3] else (0,), dtype=dtype)
    num_read = _read_into(f, memoryview(array).cast("B")) if array.size else 0
    expected = math.prod(shape) * dtype.itemsize
    if len(dims) < 4 * magic[3] or num_read != expected or f.read(1):
        raise UserError(f"{path}: truncated or padded IDX file: header says shape {shape} "
                        f"({expected} bytes of data), file has {num_read if num_read != expected else 'more'}; "
                        "download or copy it again")
    return array.astype(dtype.newbyteorder("="), copy=False)


def _read_into(f: BinaryIO, buffer: memoryview, chunk_bytes: int = 2**22) -> int:
    """Fill `buffer` from `f` in chunks (gzip's readinto would decompress the whole payload into a temporary)."""
    num_read = 0
    while num_read < len(buffer):
        chunk = f.readinto(buffer[num_read: num_read + chunk_bytes])
        if not chunk:
            break
        num_read += chunk
    return num_read


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
    except Exception as error:  # a malformed name or a community source TFDS cannot load comes in many types
        raise UserError(f"data.source=tfds:{name}: TFDS cannot load that name ({first_line(error)}); give a "
                        f"dataset name such as tfds:mnist or tfds:emnist/letters") from None
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
    _check_download_hosts(builder, name)
    try:
        builder.download_and_prepare()
    except Exception as error:  # network and extraction failures come in many types
        raise UserError(f"data.source=tfds:{name}: could not download or prepare it ({first_line(error)}); "
                        f"offline, use {OFFLINE_SOURCES}") from None


def _check_download_hosts(builder, name: str, timeout_seconds: float = 5.0) -> None:
    """Fail in seconds when the dataset's download hosts cannot be reached, instead of after TFDS's retries.

    The hosts come from the URLs TFDS registers for the dataset (its checksums file); a dataset
    without registered URLs is not probed. Behind an HTTP(S) proxy the probe is skipped: the proxy,
    not this machine, reaches the hosts.
    """
    import urllib.request

    urls = list(builder.url_infos or ())
    if not urls or urllib.request.getproxies():
        return
    for host, port in sorted({_host_and_port(url) for url in urls}):
        try:
            socket.create_connection((host, port), timeout=timeout_seconds).close()
        except OSError as error:
            raise UserError(f"data.source=tfds:{name}: cannot reach {host}:{port} to download it ({error}); "
                            f"connect to the network, prepare it elsewhere and set data.tfds_data_dir, "
                            f"or offline use {OFFLINE_SOURCES}") from None


def _host_and_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (80 if parts.scheme == "http" else 443)


def _tfds_split(builder, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds

    try:
        dataset = builder.as_dataset(split=split, batch_size=4096, as_supervised=True)
    except AssertionError:  # TFDS's way of saying "not prepared in data_dir"
        raise UserError(f"data.source=tfds:{name}: not prepared in {builder.data_dir}; set data.download=true "
                        f"to download it, data.tfds_data_dir=DIR where it is prepared, or offline use "
                        f"{OFFLINE_SOURCES}") from None
    shape = builder.info.features["image"].shape
    if None in shape:
        raise UserError(f"data.source=tfds:{name}: its images vary in size {shape}; this pipeline needs one "
                        "image size: export them to folder:DIR and set data.image_size")
    images = np.empty((_num_examples(builder, split), *shape), dtype=builder.info.features["image"].np_dtype)
    labels = np.empty((len(images),), dtype=np.int64)
    start = 0
    for batch_images, batch_labels in tfds.as_numpy(dataset):  # filled in place: one copy of the split
        if start + len(batch_labels) > len(images):  # only when TFDS does not know the split's size
            images, labels = _grown(images, start + len(batch_labels)), _grown(labels, start + len(batch_labels))
        images[start: start + len(batch_labels)] = batch_images
        labels[start: start + len(batch_labels)] = batch_labels
        start += len(batch_labels)
    return _with_channels(images[:start]), labels[:start]


def _num_examples(builder, split: str) -> int:
    try:
        return builder.info.splits[split].num_examples
    except KeyError:  # e.g. under tfds.testing.mock_data
        return 0


def _grown(array: np.ndarray, min_length: int) -> np.ndarray:
    grown = np.empty((max(min_length, 2 * len(array)), *array.shape[1:]), dtype=array.dtype)
    grown[: len(array)] = array
    return grown


def read_npz(path: Path | str) -> SourceData:
    """A NumPy `.npz` with `x_train`, `y_train`, `x_test`, `y_test` (Keras' `mnist.npz` layout); pickles refused.

    `path` is a local file or a bucket URL (read in blocks as NumPy asks for them, not downloaded first).
    """
    if isinstance(path, str):
        remote.list_objects(path)  # one line if the bucket or object is missing, denied or unreachable
        with remote.store_errors(path), remote.open_binary(path) as f:
            return _read_npz(f, path)
    if not path.is_file():
        raise UserError(f"data.source=npz:{path}: no such file; point it at a file written by "
                        "numpy.savez(x_train=..., y_train=..., x_test=..., y_test=...)")
    return _read_npz(path, path)


def _read_npz(file: Path | BinaryIO, path: Path | str) -> SourceData:
    """`file` (named `path` in messages) as an .npz dataset."""
    if not zipfile.is_zipfile(file):
        raise UserError(f"data.source=npz:{path}: not an .npz (zip) file; point it at a file written by "
                        "numpy.savez(x_train=..., y_train=..., x_test=..., y_test=...)")
    if not isinstance(file, Path):
        file.seek(0)
    try:
        with np.load(file, allow_pickle=False) as data:
            missing = [key for key in NPZ_KEYS if key not in data.files]
            if missing:
                raise UserError(f"{path}: no {', '.join(missing)} array(s) (it has {', '.join(data.files) or 'none'}); "
                                f"an npz: file needs {', '.join(NPZ_KEYS)}")
            arrays = {key: _npz_array(data, key, path) for key in NPZ_KEYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UserError(f"{path}: cannot read it as an .npz file ({first_line(error)}); "
                        "write it with numpy.savez(x_train=..., y_train=..., x_test=..., y_test=...)") from None
    for split in ("train", "test"):
        _check_npz_pair(arrays[f"x_{split}"], arrays[f"y_{split}"], split, path)
    return SourceData(_with_channels(arrays["x_train"]), arrays["y_train"], _with_channels(arrays["x_test"]),
                      arrays["y_test"], _numbered_classes(arrays["y_train"], arrays["y_test"], f"npz:{path}"))


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _npz_array(data, key: str, path: Path | str) -> np.ndarray:
    try:
        return data[key]
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise UserError(f"{path}: array {key!r} holds Python objects, which are refused (loading them would "
                            "run pickled code); save numeric arrays, e.g. uint8 images and int64 labels") from None
        raise


def _check_npz_pair(images: np.ndarray, labels: np.ndarray, split: str, path: Path | str) -> None:
    if images.ndim not in (3, 4) or labels.ndim != 1:
        raise UserError(f"{path}: x_{split} has shape {images.shape} and y_{split} {labels.shape}; expected "
                        "images [N, height, width] or [N, height, width, channels] and labels [N]")
    if len(images) != len(labels):
        raise UserError(f"{path}: x_{split} has {len(images)} images but y_{split} has {len(labels)} labels; "
                        "each image needs exactly one label")


def _find_idx_file(data_dir: str, names: list[str], prefix: str) -> str:
    """The one name among `names` (the files of `data_dir`) that starts with `prefix`."""
    matches = sorted(name for name in names if name.startswith(prefix))
    if not matches:
        raise UserError(f"{data_dir}: no {prefix}* file; an idx: folder needs train-images, train-labels, "
                        "t10k-images and t10k-labels files (raw or .gz)")
    if len(matches) > 1:
        raise UserError(f"{data_dir}: {len(matches)} {prefix}* files ({', '.join(matches)}); "
                        "keep one of them (raw or .gz) so it is clear which is read")
    return matches[0]


MAX_LABEL = 100_000  # classes are numbered 0..max label: a larger label is a mistake, not a class


def _numbered_classes(train_labels: np.ndarray, test_labels: np.ndarray, source: str) -> tuple[str, ...]:
    """Names "0".."max label" for sources that carry none (see data.class_names); unused ones are dropped later."""
    largest = max(train_labels.max(initial=0), test_labels.max(initial=0))
    if np.issubdtype(np.asarray(largest).dtype, np.integer) and largest > MAX_LABEL:
        raise UserError(f"data.source={source}: a label is {largest}; labels number the classes from 0, up to "
                        f"{MAX_LABEL:,}: renumber them")
    return tuple(str(i) for i in range(max(int(largest), 0) + 1))


def _with_channels(images: np.ndarray) -> np.ndarray:
    return images[..., np.newaxis] if images.ndim == 3 else images
