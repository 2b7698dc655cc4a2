"""Ingest: read the source, carve stratified validation (and, if needed, test) splits, write them."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from components.artifacts import Splits, split_path
from components.sources import SourceData, read_source
from pipeline.config import DataConfig
from pipeline.errors import UserError

log = logging.getLogger(__name__)


def ingest(config: DataConfig, out_dir: Path) -> Splits:
    """Read `config.source` and write `train`, `val` and `test` splits into `out_dir`.

    The source's test split is kept untouched; sources without one (digits) get a seeded,
    stratified test split first. Validation is carved from train, stratified, with `config.seed`.

    Args:
        config: the `data` section.
        out_dir: folder for `<split>.npz` files; created.

    Returns:
        The splits, their sizes, class names and a sha256 fingerprint of the source data.
    """
    source = read_source(config.source, config.tfds_data_dir, config.download)
    class_names = _class_names(config, source)
    fingerprint = fingerprint_arrays(source.train_images, source.train_labels,
                                     source.test_images, source.test_labels)
    splits = _split(config, source)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, (images, labels) in splits.items():
        np.savez(split_path(out_dir, name), images=images, labels=labels)
    num_examples = {name: int(len(labels)) for name, (_, labels) in splits.items()}
    log.info("ingest: %s -> %s", config.source, num_examples)
    return Splits(out_dir, fingerprint, class_names, num_examples)


def fingerprint_arrays(*arrays: np.ndarray | None) -> str:
    """sha256 over the dtype, shape and bytes of each array (None counts as absent)."""
    digest = hashlib.sha256()
    for array in arrays:
        if array is None:
            digest.update(b"none;")
            continue
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(array.data)
    return digest.hexdigest()


def _split(config: DataConfig, source: SourceData) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    train_x, train_y = source.train_images, source.train_labels
    if source.test_images is None:
        train_x, test_x, train_y, test_y = _stratified(train_x, train_y, config.test_fraction, config.seed,
                                                        "data.test_fraction")
    else:
        test_x, test_y = source.test_images, source.test_labels
    train_x, val_x, train_y, val_y = _stratified(train_x, train_y, config.val_fraction, config.seed, "data.val_fraction")
    if 0 < config.max_train_examples < len(train_y):
        train_x, _, train_y, _ = _stratified(train_x, train_y, len(train_y) - config.max_train_examples,
                                             config.seed, "data.max_train_examples")
    return {"train": (train_x, train_y), "val": (val_x, val_y), "test": (test_x, test_y)}


def _stratified(images: np.ndarray, labels: np.ndarray, held_out: float | int, seed: int, key: str):
    """Seeded stratified split; `held_out` is a fraction (float) or a count (int) of the second part."""
    if len(labels) != len(images):
        raise UserError(f"the source has {len(images)} training images but {len(labels)} labels; "
                        "each image needs exactly one label")
    try:
        return train_test_split(images, labels, test_size=held_out, stratify=labels, random_state=seed)
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
