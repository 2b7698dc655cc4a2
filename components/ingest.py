"""Ingest: read the source, carve stratified validation (and, if needed, test) splits, write them as shards.

The splits are written as TFRecord shards (`components/shards/writer.py`), chunk by chunk. Array sources
(digits, idx, npz, tfds) are read into memory first, as their formats require, and the splits are
gathered from them a chunk at a time (each chunk resized to `data.image_size`, when set, as image files
are resized); a `folder:` source is only listed, and each split's files are decoded a chunk at a time
while it is written, so a folder far bigger than memory can be ingested.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
from sklearn.model_selection import train_test_split

from components.artifacts import Splits
from components.config import DataConfig
from components.errors import UserError
from components.shards.layout import examples_per_chunk
from components.shards.writer import SplitWriter
from components.source_data import ImageFolder, SourceData
from components.sources import read_source

log = logging.getLogger(__name__)

Source = SourceData | ImageFolder


def ingest(config: DataConfig, out_dir: Path, min_image_size: int = 0) -> Splits:
    """Read `config.source` and write the `train`, `val` and `test` splits into `out_dir`.

    The source's test split is kept untouched; sources without one (digits, a folder without
    `test/`) get a seeded, stratified test split first. Validation is carved from train, stratified,
    with `config.seed`; train is written in the seeded random order the carving leaves it in. Splits
    are chosen as indices and each is written once, a chunk at a time. `splits.json` appears only
    when all three are written; after a failure nothing is left that looks finished.

    Args:
        config: the `data` section.
        out_dir: folder for the shards, labels and `splits.json`; created.
        min_image_size: the smallest height and width the network takes (a backbone's); with no
            `data.image_size`, smaller images are resized up to it. 0 = any.

    Returns:
        The splits: their sizes, class names, image shape and dtype, a sha256 of what they hold (every
        split's images, labels and shard layout, and the class names), and the number of files skipped.

    Raises:
        UserError: the source is missing or malformed, cannot be split as configured, or (with
            data.on_bad_file=fail) holds unreadable image files.
    """
    source = read_source(config)
    original_size = config.image_size
    config, source = _at_least(config, source, min_image_size)
    if isinstance(source, SourceData):
        source = drop_unused_classes(source)
        _check_arrays(source)
        _check_resizable(source, config.image_size, resized_for_the_network=min_image_size > 0 and
                         config.image_size != original_size)
    class_names = _class_names(config, source)
    rows = _split_rows(config, _part_labels(source, "train"), _part_labels(source, "test"))
    image_shape, dtype = _image_type(source, config.image_size)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = SplitWriter(out_dir, image_shape, dtype, class_names, config.shard_mb)
    bad_files: list[tuple[str, str]] = []
    try:
        num_examples = {split: writer.write_split(split, _chunks(source, part, indices, image_shape, bad_files),
                                                  len(indices))
                        for split, (part, indices) in rows.items()}
        _check_bad_files(config, source, bad_files)
        data_sha256 = writer.publish()
    except BaseException:
        writer.discard()
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    log.info("ingest: %s -> %s", config.source, num_examples)
    return Splits(out_dir, data_sha256, class_names, num_examples, image_shape, dtype, len(bad_files))


def _chunks(source: Source, part: str, indices: np.ndarray, image_shape: tuple[int, int, int],
            bad_files: list[tuple[str, str]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The rows `indices` of the source's `part` (train or test), as (images, labels) chunks in that order.

    Images of an array source are resized, a chunk at a time, to `image_shape` when theirs differs.
    Unreadable files of a folder source are left out and appended to `bad_files`.
    """
    if isinstance(source, ImageFolder):
        from components.image_folder import decode_chunks  # Pillow, only when needed

        files = source.train_files if part == "train" else source.test_files
        for chunk in decode_chunks(files, indices, source.image_format):
            bad_files.extend(chunk.bad_files)
            yield chunk.images, chunk.labels
        return
    images, labels = (source.train_images, source.train_labels) if part == "train" else \
        (source.test_images, source.test_labels)
    # A chunk is gathered at the source's size and resized to the split's: both stay within a chunk's bytes.
    rows_per_chunk = examples_per_chunk(max(images[:1].nbytes, images.itemsize * int(np.prod(image_shape))))
    for start in range(0, len(indices), rows_per_chunk):
        rows = indices[start: start + rows_per_chunk]
        yield _resized(images[rows], image_shape[:2]), labels[rows]


def _resized(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`images` at `size` (height, width), resized as the image readers resize a file (Pillow, only when needed)."""
    if images.shape[1:3] == size:
        return images
    from components.images import resize_images

    return resize_images(images, size)


def _check_bad_files(config: DataConfig, source: Source, bad_files: list[tuple[str, str]]) -> None:
    """Stop on unreadable files under data.on_bad_file=fail, naming them all; otherwise warn once."""
    if not bad_files:
        return
    bad_files.sort()  # in the folder's order, not the shuffled order train was written in
    if config.on_bad_file == "fail":
        from components.image_folder import bad_files_message

        raise UserError(bad_files_message(source.folder_dir, tuple(bad_files)))
    log.warning("folder: skipped %d unreadable image file(s) (data.on_bad_file=skip), e.g. %s (%s)",
                len(bad_files), *bad_files[0])


def _split_rows(config: DataConfig, train_labels: np.ndarray,
                test_labels: np.ndarray | None) -> dict[str, tuple[str, np.ndarray]]:
    """Per split: the part of the source it is taken from (train or test), and which of its rows."""
    train = np.arange(len(train_labels))
    if test_labels is None:
        train, test = _stratified(train, train_labels, config.test_fraction, config.seed, "data.test_fraction")
        test_split = ("train", test)
    else:
        test_split = ("test", np.arange(len(test_labels)))
    train, val = _stratified(train, train_labels, config.val_fraction, config.seed, "data.val_fraction")
    if 0 < config.max_train_examples < len(train):
        train, _ = _stratified(train, train_labels, len(train) - config.max_train_examples, config.seed,
                               "data.max_train_examples")
    return {"train": ("train", train), "val": ("train", val), "test": test_split}


def _part_labels(source: Source, part: str) -> np.ndarray | None:
    """The labels of the source's train or test part; None when it has no test part."""
    if isinstance(source, ImageFolder):
        files = source.train_files if part == "train" else source.test_files
        return None if files is None else files.labels
    return source.train_labels if part == "train" else source.test_labels


def _image_type(source: Source, image_size: tuple[int, ...]) -> tuple[tuple[int, int, int], str]:
    """(height, width, channels) and the dtype name every image of the source has once resized to `image_size`."""
    if isinstance(source, ImageFolder):
        image_format = source.image_format
        return (image_format.height, image_format.width, image_format.channels), "uint8"
    height, width, channels = (int(n) for n in source.train_images.shape[1:])
    height, width = image_size or (height, width)
    return (height, width, channels), source.train_images.dtype.name


def _at_least(config: DataConfig, source: Source, min_image_size: int) -> tuple[DataConfig, Source]:
    """The config and source with `data.image_size` raised to `min_image_size` where the images are smaller
    and no size was given; a folder is listed again for that size."""
    height, width = _image_type(source, config.image_size)[0][:2]
    if config.image_size or min(height, width) >= min_image_size:
        return config, source
    size = (max(height, min_image_size), max(width, min_image_size))
    log.info("ingest: %dx%d images resized to %dx%d, the network's smallest", height, width, *size)
    config = dataclasses.replace(config, image_size=size)
    return config, read_source(config) if isinstance(source, ImageFolder) else source


def _check_resizable(source: SourceData, image_size: tuple[int, ...], resized_for_the_network: bool = False) -> None:
    """Images to resize are 8-bit with 1 or 3 channels: what Pillow resizes as it resizes image files.

    Raises:
        UserError: naming the images' type and what to do instead.
    """
    images = source.train_images
    if not image_size or images.shape[1:3] == image_size:
        return
    if images.dtype != np.uint8 or images.shape[-1] not in (1, 3):
        asked = (f"the network takes images of at least {min(image_size)}x{min(image_size)}, so ingest resizes "
                 "them; it") if resized_for_the_network else f"data.image_size={image_size}"
        raise UserError(f"{asked} resizes 8-bit images of 1 (grayscale) or 3 (RGB) channels, "
                        f"and the source's are {images.dtype} with {images.shape[-1]} channel(s); convert them at "
                        "the source (e.g. floats in 0..1: np.round(x * 255).astype(np.uint8))"
                        + ("" if resized_for_the_network else ", or remove data.image_size"))


def _check_arrays(source: SourceData) -> None:
    """What the split files need of an array source: a label per image, integer labels, one image shape and type.

    Raises:
        UserError: naming the part (train or test) and what to fix.
    """
    parts = {"train": (source.train_images, source.train_labels)}
    if source.test_images is not None:
        parts["test"] = (source.test_images, source.test_labels)
    for part, (images, labels) in parts.items():
        if len(labels) != len(images):
            raise UserError(f"the source has {len(images)} {'training' if part == 'train' else 'test'} images "
                            f"but {len(labels)} labels; each image needs exactly one label")
        if images.ndim != 4:
            raise UserError(f"{part} images have shape {images.shape[1:]}; expected height x width x channels")
        if not np.issubdtype(labels.dtype, np.integer):
            raise UserError(f"{part} labels have dtype {labels.dtype}; labels must be integers "
                            f"0..{len(source.class_names) - 1}")
    shapes = {part: images.shape[1:] for part, (images, _) in parts.items()}
    dtypes = {part: str(images.dtype) for part, (images, _) in parts.items()}
    if len(set(shapes.values())) > 1 or len(set(dtypes.values())) > 1:
        raise UserError(f"splits disagree on image shape or dtype: shapes {shapes}, dtypes {dtypes}; "
                        "every image must have the same size, channels and type")


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


def _stratified(indices: np.ndarray, labels: np.ndarray, held_out: float | int, seed: int, key: str):
    """Seeded stratified split of `indices` (rows of `labels`); `held_out` is a fraction or a count."""
    try:
        return train_test_split(indices, test_size=held_out, stratify=labels[indices], random_state=seed)
    except ValueError as error:
        raise UserError(f"cannot split the training data as {key} asks ({error}); every class needs at least "
                        f"2 training examples, and {key} must leave examples on both sides") from None


def _class_names(config: DataConfig, source: Source) -> tuple[str, ...]:
    if not config.class_names:
        return source.class_names
    names = tuple(name.strip() for name in config.class_names.split(","))
    if len(names) != len(source.class_names):
        raise UserError(f"data.class_names has {len(names)} names but the data has {len(source.class_names)} "
                        "classes; give one comma-separated name per class")
    return names
