"""Ingest: read the source, carve stratified validation (and, if needed, test) splits, write them."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from components.artifacts import Splits, split_path
from components.config import DataConfig
from components.errors import UserError
from components.source_data import SourceData
from components.sources import read_source

log = logging.getLogger(__name__)


def ingest(config: DataConfig, out_dir: Path) -> Splits:
    """Read `config.source` and write `train`, `val` and `test` splits into `out_dir`.

    The source's test split is kept untouched; sources without one (digits, a folder without
    `test/`) get a seeded, stratified test split first. Validation is carved from train, stratified,
    with `config.seed`. Splits are chosen as indices and each is written once, in chunks, so the
    dataset is held in memory once. The split files appear only when all three are written.

    Args:
        config: the `data` section.
        out_dir: folder for `<split>.npz` files; created.

    Returns:
        The splits, their sizes, class names, a sha256 of what they hold (every split's images and
        labels, and the class names), and the number of files skipped.
    """
    source = drop_unused_classes(read_source(config))
    class_names = _class_names(config, source)
    splits = _split_rows(config, source)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_sha256 = write_splits(out_dir, splits, extra=repr(class_names).encode())
    num_examples = {name: int(len(rows)) for name, (_, _, rows) in splits.items()}
    log.info("ingest: %s -> %s", config.source, num_examples)
    return Splits(out_dir, data_sha256, class_names, num_examples, len(source.skipped_files))


CHUNK_BYTES = 16 * 2**20  # rows written per chunk: bounds the extra memory of writing a split


def write_splits(out_dir: Path, splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                 extra: bytes = b"") -> str:
    """Write `<split>.npz` (`images`, `labels`) for each (images, labels, indices), all or none.

    Each file is written under a temporary name and renamed once every split is written, so a
    failure never leaves a complete-looking set of split files behind.

    Returns:
        sha256 over `extra` and every split's name, arrays' dtypes, shapes and bytes as written.
    """
    tmp_paths = {name: split_path(out_dir, name).with_name(f".{name}.npz.tmp") for name in splits}
    digest = hashlib.sha256(extra)
    try:
        for name, (images, labels, indices) in splits.items():
            digest.update(f"{name};".encode())
            _write_npz(tmp_paths[name], {"images": (images, indices), "labels": (labels, indices)}, digest)
        for name, tmp_path in tmp_paths.items():
            os.replace(tmp_path, split_path(out_dir, name))
    finally:
        for tmp_path in tmp_paths.values():
            tmp_path.unlink(missing_ok=True)
    return digest.hexdigest()


def _write_npz(path: Path, arrays: dict[str, tuple[np.ndarray, np.ndarray]], digest: Any) -> None:
    """An uncompressed .npz, as `np.savez` writes it, of `array[indices]` per key, gathered in chunks."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, (array, indices) in arrays.items():
            header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False,
                      "shape": (len(indices), *array.shape[1:])}
            rows_per_chunk = max(1, CHUNK_BYTES // max(1, array[:1].nbytes))
            digest.update(f"{key};{header['descr']};{header['shape']};".encode())
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_2_0(member, header)
                for start in range(0, len(indices), rows_per_chunk):
                    chunk = np.ascontiguousarray(array[indices[start: start + rows_per_chunk]])
                    digest.update(chunk.data)
                    member.write(chunk)


def _split_rows(config: DataConfig, source: SourceData) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per split: the source's images and labels it is taken from, and which rows of them."""
    images, labels = source.train_images, source.train_labels
    _check_lengths(source)
    train = np.arange(len(labels))
    if source.test_images is None:
        train, test = _stratified(train, labels, config.test_fraction, config.seed, "data.test_fraction")
        test_split = (images, labels, test)
    else:
        test_split = (source.test_images, source.test_labels, np.arange(len(source.test_labels)))
    train, val = _stratified(train, labels, config.val_fraction, config.seed, "data.val_fraction")
    if 0 < config.max_train_examples < len(train):
        train, _ = _stratified(train, labels, len(train) - config.max_train_examples, config.seed,
                               "data.max_train_examples")
    return {"train": (images, labels, train), "val": (images, labels, val), "test": test_split}


def drop_unused_classes(source: SourceData) -> SourceData:
    """Keep only the classes that have an image, renumbered in order (labels and names together).

    A source may declare classes its data never uses: TFDS's emnist/letters declares 37 label values
    and uses 26. A class with no image cannot be learned or scored, so it is not kept.
    """
    labels = [source.train_labels] + ([source.test_labels] if source.test_labels is not None else [])
    used = np.unique(np.concatenate(labels))
    if len(used) == len(source.class_names) or used.size == 0 or used.min() < 0 or \
            used.max() >= len(source.class_names):  # nothing to drop, or out-of-range labels: validate says so
        return source
    kept = set(used.tolist())
    dropped = [name for index, name in enumerate(source.class_names) if index not in kept]
    log.warning("ingest: %d declared class(es) have no image and are left out: %s", len(dropped),
                ", ".join(dropped[:10]) + (", ..." if len(dropped) > 10 else ""))
    renumber = {"train_labels": np.searchsorted(used, source.train_labels),
                "test_labels": None if source.test_labels is None else np.searchsorted(used, source.test_labels)}
    return dataclasses.replace(source, **renumber, class_names=tuple(source.class_names[i] for i in used))


def _check_lengths(source: SourceData) -> None:
    if len(source.train_labels) != len(source.train_images):
        raise UserError(f"the source has {len(source.train_images)} training images but "
                        f"{len(source.train_labels)} labels; each image needs exactly one label")


def _stratified(indices: np.ndarray, labels: np.ndarray, held_out: float | int, seed: int, key: str):
    """Seeded stratified split of `indices` (rows of `labels`); `held_out` is a fraction or a count."""
    try:
        return train_test_split(indices, test_size=held_out, stratify=labels[indices], random_state=seed)
    except ValueError as error:
        raise UserError(f"cannot split the training data as {key} asks ({error}); every class needs at least "
                        f"2 training examples, and {key} must leave examples on both sides") from None


def _class_names(config: DataConfig, source: SourceData) -> tuple[str, ...]:
    if not config.class_names:
        return source.class_names
    names = tuple(name.strip() for name in config.class_names.split(","))
    if len(names) != len(source.class_names):
        raise UserError(f"data.class_names has {len(names)} names but the data has {len(source.class_names)} "
                        "classes; give one comma-separated name per class")
    return names
