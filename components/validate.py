"""Validate: check every split against one schema and write the schema and per-split statistics."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from components.artifacts import SPLITS, Schema, Splits, load_split
from components.atomic import write_text_atomically
from components.config import ValidateConfig
from components.errors import UserError

log = logging.getLogger(__name__)


def validate(config: ValidateConfig, splits: Splits, out_dir: Path) -> Schema:
    """Check the splits and write `schema.json` and `statistics.json` into `out_dir`.

    Args:
        config: the `validate` section.
        splits: ingest's output.
        out_dir: folder for the JSON files; created.

    Returns:
        The schema: image shape and number of classes, which the model is built from, the warnings
        and a one-line summary.

    Raises:
        UserError: fewer than two classes, an empty split, inconsistent shapes or dtypes, NaN or inf
            pixels, labels that are not integers or out of range, or a class with no training example.
    """
    num_classes = len(splits.class_names)
    if num_classes < 2:
        raise UserError(f"the data has {num_classes} class ({', '.join(splits.class_names) or 'none'}); a "
                        "classifier needs at least 2: add images of another class to the source")
    data = {split: load_split(splits, split) for split in SPLITS}
    image_shape = _check_shapes(data)
    for split, (images, labels) in data.items():
        _check_values(split, images, labels, num_classes)
    for split, (images, _) in data.items():  # after the values: NaN is the more precise message
        _check_pixels_are_bytes(split, images)
    _check_every_class_in_train(data["train"][1], splits.class_names)
    schema = {"image_shape": list(image_shape), "dtype": str(data["train"][0].dtype),
              "num_classes": num_classes, "class_names": list(splits.class_names)}
    statistics = {split: split_statistics(images, labels, num_classes) for split, (images, labels) in data.items()}
    num_leaked = count_shared_images(data["train"][0], data["test"][0])
    warnings = _warnings(config, statistics, splits.class_names, num_leaked)
    statistics["source"] = {"skipped_files": splits.num_skipped_files, "test_images_also_in_train": num_leaked}
    statistics["warnings"] = warnings
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "statistics.json", statistics)
    _write_json(out_dir / "schema.json", schema)  # last: its presence means validate finished
    return Schema(out_dir / "schema.json", out_dir / "statistics.json", image_shape, num_classes,
                  tuple(warnings), _summary(statistics, image_shape, num_classes, splits.num_skipped_files))


def split_statistics(images: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Count, per-class counts, pixel min/max/mean/std and per-channel mean of one split.

    Sums are taken in float64 over chunks, so no float copy of the whole split is made.
    """
    num_channels = images.shape[-1]
    total, total_sq = np.zeros(num_channels), np.zeros(num_channels)
    for start in range(0, len(images), STATISTICS_CHUNK):
        chunk = images[start: start + STATISTICS_CHUNK].reshape(-1, num_channels).astype(np.float64)
        total += chunk.sum(axis=0)
        total_sq += np.square(chunk).sum(axis=0)
    num_values = max(1, images.size // num_channels)
    mean = total.sum() / (num_values * num_channels)
    variance = max(0.0, total_sq.sum() / (num_values * num_channels) - mean**2)
    return {
        "count": int(len(labels)),
        "class_counts": np.bincount(labels, minlength=num_classes).tolist(),
        "pixel_min": float(images.min()), "pixel_max": float(images.max()),
        "pixel_mean": float(mean), "pixel_std": float(np.sqrt(variance)),
        "channel_mean": (total / num_values).tolist(),
    }


STATISTICS_CHUNK = 4096  # images per chunk when summing pixels


def count_shared_images(train_images: np.ndarray, test_images: np.ndarray) -> int:
    """How many test images are byte-for-byte identical to some training image (train/test leakage)."""
    train_digests = {_digest(image) for image in train_images}
    return sum(_digest(image) in train_digests for image in test_images)


def _digest(image: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).digest()


def _warnings(config: ValidateConfig, statistics: dict, class_names: tuple[str, ...], num_leaked: int) -> list[str]:
    warnings = [_imbalance_warning(statistics["train"]["class_counts"], class_names, config.imbalance_warn_ratio),
                _leakage_warning(num_leaked, statistics["test"]["count"]),
                _drift_warning(statistics["train"], statistics["test"], config.drift_warn_std)]
    warnings = [warning for warning in warnings if warning]
    for warning in warnings:
        log.warning("validate: %s", warning)
    return warnings


def _summary(statistics: dict, image_shape: tuple[int, int, int], num_classes: int, num_skipped: int) -> str:
    counts = " / ".join(f"{split} {statistics[split]['count']}" for split in SPLITS)
    shape = "x".join(str(n) for n in image_shape)
    skipped = f", {num_skipped} bad files skipped" if num_skipped else ""
    num_warnings = len(statistics["warnings"])
    return f"{counts}, {shape}, {num_classes} classes{skipped}, {num_warnings} warning{'s' * (num_warnings != 1)}"


def _write_json(path: Path, data: dict) -> None:
    write_text_atomically(path, json.dumps(data, indent=2))


def _check_shapes(data: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[int, int, int]:
    for split, (images, labels) in data.items():
        if len(labels) == 0:
            raise UserError(f"the {split} split is empty; give the source more data or change data.val_fraction")
        if images.ndim != 4:
            raise UserError(f"{split} images have shape {images.shape[1:]}; expected height x width x channels")
    shapes = {split: images.shape[1:] for split, (images, _) in data.items()}
    dtypes = {split: str(images.dtype) for split, (images, _) in data.items()}
    if len(set(shapes.values())) > 1 or len(set(dtypes.values())) > 1:
        raise UserError(f"splits disagree on image shape or dtype: shapes {shapes}, dtypes {dtypes}; "
                        "every image must have the same size, channels and type")
    if shapes["train"][-1] not in (1, 3):
        raise UserError(f"images have {shapes['train'][-1]} channels; this pipeline takes 1 (grayscale) or 3 (RGB): "
                        "convert them at the source, or use a folder: source with data.channels")
    return tuple(int(n) for n in shapes["train"])  # type: ignore[return-value]


def _check_pixels_are_bytes(split: str, images: np.ndarray) -> None:
    """The model and its exports take 8-bit pixels, 0..255; other types would be scaled wrongly."""
    if images.dtype != np.uint8:
        raise UserError(f"{split} images have dtype {images.dtype}; this pipeline takes 8-bit pixels 0..255: "
                        "convert them at the source (e.g. floats in 0..1: np.round(x * 255).astype(np.uint8))")


def _check_values(split: str, images: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{split} labels have dtype {labels.dtype}; labels must be integers 0..{num_classes - 1}")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise UserError(f"{split} label {labels[bad[0]]} at index {bad[0]} is out of range 0..{num_classes - 1} "
                        f"({bad.size} such labels); fix the labels or the class names")
    if np.issubdtype(images.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(images).reshape(len(images), -1).all(axis=1))
        if bad.size:
            raise UserError(f"{split} image at index {bad[0]} has NaN or inf pixels ({bad.size} such images); "
                            "drop or repair them at the source")


def _check_every_class_in_train(train_labels: np.ndarray, class_names: tuple[str, ...]) -> None:
    counts = np.bincount(train_labels, minlength=len(class_names))
    missing = [class_names[i] for i in np.flatnonzero(counts == 0)]
    if missing:
        raise UserError(f"class(es) {', '.join(missing)} have no training example; add examples or remove the class")


def _imbalance_warning(class_counts: list[int], class_names: tuple[str, ...], ratio: float) -> str:
    largest, smallest = max(class_counts), min(class_counts)
    if not smallest or largest / smallest <= ratio:
        return ""
    return (f"class imbalance {largest / smallest:.1f}:1 in train ({class_names[int(np.argmax(class_counts))]}: "
            f"{largest}, {class_names[int(np.argmin(class_counts))]}: {smallest}) exceeds "
            f"validate.imbalance_warn_ratio={ratio:g}")


def _leakage_warning(num_leaked: int, num_test: int) -> str:
    if not num_leaked:
        return ""
    return (f"{num_leaked} of {num_test} test images are exact duplicates of training images (leakage): "
            "test accuracy overstates accuracy on new data; remove them from one side")


def _drift_warning(train: dict, test: dict, max_std: float) -> str:
    scale = max(train["pixel_std"], 1e-12)
    mean_shift = abs(test["pixel_mean"] - train["pixel_mean"]) / scale
    std_shift = abs(test["pixel_std"] - train["pixel_std"]) / scale
    if max(mean_shift, std_shift) <= max_std:
        return ""
    return (f"test pixels differ from train's: mean {test['pixel_mean']:.1f} vs {train['pixel_mean']:.1f}, "
            f"std {test['pixel_std']:.1f} vs {train['pixel_std']:.1f} (beyond validate.drift_warn_std={max_std:g} "
            "train stds); check that both splits come from the same source and preprocessing")
