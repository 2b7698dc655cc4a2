"""Validate: check every split against one schema and write the schema and per-split statistics."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from components.artifacts import SPLITS, Schema, Splits, load_split
from pipeline.config import ValidateConfig
from pipeline.errors import UserError

log = logging.getLogger(__name__)


def validate(config: ValidateConfig, splits: Splits, out_dir: Path) -> Schema:
    """Check the splits and write `schema.json` and `statistics.json` into `out_dir`.

    Args:
        config: the `validate` section.
        splits: ingest's output.
        out_dir: folder for the JSON files; created.

    Returns:
        The schema: image shape and number of classes, which the model is built from.

    Raises:
        UserError: empty split, inconsistent shapes or dtypes, NaN or inf pixels, labels that are not
            integers or out of range, or a class with no training example.
    """
    num_classes = len(splits.class_names)
    data = {split: load_split(splits, split) for split in SPLITS}
    image_shape = _check_shapes(data)
    for split, (images, labels) in data.items():
        _check_values(split, images, labels, num_classes)
    _check_every_class_in_train(data["train"][1], splits.class_names)
    schema = {"image_shape": list(image_shape), "dtype": str(data["train"][0].dtype),
              "num_classes": num_classes, "class_names": list(splits.class_names)}
    statistics = {split: split_statistics(images, labels, num_classes) for split, (images, labels) in data.items()}
    _warn_on_imbalance(statistics["train"]["class_counts"], splits.class_names, config.imbalance_warn_ratio)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "schema.json").write_text(json.dumps(schema, indent=2))
    (out_dir / "statistics.json").write_text(json.dumps(statistics, indent=2))
    return Schema(out_dir / "schema.json", out_dir / "statistics.json", image_shape, num_classes)


def split_statistics(images: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Count, per-class counts and pixel min/max/mean/std of one split."""
    pixels = images.astype(np.float64)
    return {
        "count": int(len(labels)),
        "class_counts": np.bincount(labels, minlength=num_classes).tolist(),
        "pixel_min": float(pixels.min()), "pixel_max": float(pixels.max()),
        "pixel_mean": float(pixels.mean()), "pixel_std": float(pixels.std()),
    }


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
    return tuple(int(n) for n in shapes["train"])  # type: ignore[return-value]


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


def _warn_on_imbalance(class_counts: list[int], class_names: tuple[str, ...], ratio: float) -> None:
    largest, smallest = max(class_counts), min(class_counts)
    if smallest and largest / smallest > ratio:
        log.warning("validate: class imbalance %.1f:1 in train (%s: %d, %s: %d) exceeds validate.imbalance_warn_ratio",
                    largest / smallest, class_names[int(np.argmax(class_counts))], largest,
                    class_names[int(np.argmin(class_counts))], smallest)
