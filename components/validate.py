"""Validate: check every split against one schema and write the schema and per-split statistics.

Each split is read in one streaming pass (`components.shards.tf_reader.image_chunks`): statistics, the
per-image digests that find test images copied from train, and the check that every record holds
an image of the declared shape and dtype. Labels come from `<split>-labels.npy`, without a pass.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from components.artifacts import SPLITS, SchemaAndStatistics, Splits
from components.atomic import write_json_atomically
from components.config import ValidateConfig
from components.errors import UserError
from components.shards.layout import split_labels
from components.shards.tf_reader import image_chunks

log = logging.getLogger(__name__)


def validate(config: ValidateConfig, splits: Splits, out_dir: Path) -> SchemaAndStatistics:
    """Check the splits and write `schema.json` and `statistics.json` into `out_dir`.

    Args:
        config: the `validate` section.
        splits: ingest's output.
        out_dir: folder for the JSON files; created.

    Returns:
        The schema: image shape and number of classes, which the model is built from, the warnings
        and a one-line summary.

    Raises:
        UserError: fewer than two classes, an empty split, images that are not 1 or 3 channels of
            8-bit pixels, NaN or inf pixels, labels out of range, a class with no training example,
            or a record whose image does not have the declared shape and dtype.
    """
    num_classes = len(splits.class_names)
    if num_classes < 2:
        raise UserError(f"the data has {num_classes} class ({', '.join(splits.class_names) or 'none'}); a "
                        "classifier needs at least 2: add images of another class to the source")
    _check_shapes(splits)
    labels = {split: split_labels(splits, split) for split in SPLITS}
    for split in SPLITS:
        _check_labels(split, labels[split], num_classes)
        if np.issubdtype(np.dtype(splits.dtype), np.floating):
            _check_finite(splits, split)
    _check_pixels_are_bytes(splits.dtype)  # after the values: NaN is the more precise message
    _check_every_class_in_train(labels["train"], splits.class_names)
    schema = {"image_shape": list(splits.image_shape), "dtype": splits.dtype,
              "num_classes": num_classes, "class_names": list(splits.class_names)}
    statistics, num_leaked = _statistics(splits, labels, num_classes)
    warnings = _warnings(config, statistics, splits.class_names, num_leaked)
    statistics["source"] = {"skipped_files": splits.num_skipped_files, "test_images_also_in_train": num_leaked}
    statistics["warnings"] = warnings
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomically(out_dir / "statistics.json", statistics)
    write_json_atomically(out_dir / "schema.json", schema)  # last: its presence means validate finished
    return SchemaAndStatistics(out_dir / "schema.json", out_dir / "statistics.json", splits.image_shape, num_classes,
                  tuple(warnings), _summary(statistics, splits.image_shape, num_classes, splits.num_skipped_files))


class PixelStatistics:
    """Pixel min, max and per-channel sums of one split, added a chunk at a time.

    Sums are taken in float64 per chunk, so no float copy of the split is made; for 8-bit pixels
    they are exact, so the result does not depend on how the split is chunked.
    """

    def __init__(self, num_channels: int):
        self.total, self.total_sq = np.zeros(num_channels), np.zeros(num_channels)
        self.minimum, self.maximum = np.inf, -np.inf
        self.num_values = 0  # pixels per channel

    def add(self, images: np.ndarray) -> None:
        """Count a chunk of images [b, H, W, C]."""
        rows = max(1, STATISTICS_BYTES // max(1, images[:1].nbytes))
        for start in range(0, len(images), rows):
            chunk = images[start: start + rows].reshape(-1, len(self.total)).astype(np.float64)
            self.total += chunk.sum(axis=0)
            self.total_sq += np.square(chunk).sum(axis=0)
        if images.size:
            self.minimum, self.maximum = min(self.minimum, images.min()), max(self.maximum, images.max())
        self.num_values += images.size // len(self.total)

    def result(self, labels: np.ndarray, num_classes: int) -> dict:
        """Count, per-class counts, pixel min/max/mean/std and per-channel mean."""
        num_values, num_channels = max(1, self.num_values), len(self.total)
        mean = self.total.sum() / (num_values * num_channels)
        variance = max(0.0, self.total_sq.sum() / (num_values * num_channels) - mean**2)
        return {
            "count": int(len(labels)),
            "class_counts": np.bincount(labels, minlength=num_classes).tolist(),
            "pixel_min": float(self.minimum), "pixel_max": float(self.maximum),
            "pixel_mean": float(mean), "pixel_std": float(np.sqrt(variance)),
            "channel_mean": (self.total / num_values).tolist(),
        }


STATISTICS_BYTES = 4 * 10**6  # pixels summed at a time: their float64 copy is 8x this


def _statistics(splits: Splits, labels: dict[str, np.ndarray], num_classes: int) -> tuple[dict, int]:
    """Every split's statistics, and how many test images are byte-for-byte copies of a training image.

    One pass per split, train first: its image digests are what test images are looked up in.
    """
    train_digests: set[bytes] = set()
    statistics, num_leaked = {}, 0
    for split in SPLITS:
        pixels, start = PixelStatistics(splits.image_shape[-1]), 0
        for images, chunk_labels in image_chunks(splits, split):
            _check_same_labels(split, labels[split][start: start + len(chunk_labels)], chunk_labels, start)
            pixels.add(images)
            if split == "train":
                train_digests.update(_digest(image) for image in images)
            elif split == "test":
                num_leaked += sum(_digest(image) in train_digests for image in images)
            start += len(chunk_labels)
        _check_same_labels(split, labels[split][start:], np.zeros((0,), np.int64), start)
        statistics[split] = pixels.result(labels[split], num_classes)
    return statistics, num_leaked


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


def _check_shapes(splits: Splits) -> None:
    """Every split has examples, and the images have 1 or 3 channels (ingest wrote one shape for all)."""
    for split in SPLITS:
        if splits.num_examples[split] == 0:
            raise UserError(f"the {split} split is empty; give the source more data or change data.val_fraction")
    if splits.image_shape[-1] not in (1, 3):
        raise UserError(f"images have {splits.image_shape[-1]} channels; this pipeline takes 1 (grayscale) or 3 "
                        "(RGB): convert them at the source, or use a folder: source with data.channels")


def _check_pixels_are_bytes(dtype: str) -> None:
    """The model and its exports take 8-bit pixels, 0..255; other types would be scaled wrongly."""
    if dtype != "uint8":
        raise UserError(f"train images have dtype {dtype}; this pipeline takes 8-bit pixels 0..255: "
                        "convert them at the source (e.g. floats in 0..1: np.round(x * 255).astype(np.uint8))")


def _check_labels(split: str, labels: np.ndarray, num_classes: int) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise UserError(f"{split} label {labels[bad[0]]} at index {bad[0]} is out of range 0..{num_classes - 1} "
                        f"({bad.size} such labels); fix the labels or the class names")


def _check_finite(splits: Splits, split: str) -> None:
    """No NaN or inf pixel in a split of float images, found in one streaming pass."""
    first_bad, num_bad, start = -1, 0, 0
    for images, _ in image_chunks(splits, split):
        bad = np.flatnonzero(~np.isfinite(images).reshape(len(images), -1).all(axis=1))
        if bad.size and first_bad < 0:
            first_bad = start + int(bad[0])
        num_bad, start = num_bad + bad.size, start + len(images)
    if num_bad:
        raise UserError(f"{split} image at index {first_bad} has NaN or inf pixels ({num_bad} such images); "
                        "drop or repair them at the source")


def _check_same_labels(split: str, stored: np.ndarray, parsed: np.ndarray, start: int) -> None:
    """The labels file and the records agree (a stale or hand-edited file would mislabel every result)."""
    differ = np.flatnonzero(stored != parsed) if len(stored) == len(parsed) else \
        np.array([min(len(stored), len(parsed))])
    if differ.size:
        raise UserError(f"the {split} split's {split}-labels.npy disagrees with its records at index "
                        f"{start + int(differ[0])}; run ingest again")


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
