"""The artifacts stages hand to each other: paths plus the small metadata a later stage needs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Splits:
    """Ingest's output: one `<split>.npz` (`images` [N, H, W, C], `labels` [N]) per split."""

    splits_dir: Path
    fingerprint: str  # sha256 of the source data's images and labels
    class_names: tuple[str, ...]
    num_examples: dict[str, int]
    num_skipped_files: int = 0  # unreadable image files skipped under data.on_bad_file=skip


@dataclass(frozen=True)
class Schema:
    """Validate's output: what every split was checked against, and where the statistics are."""

    schema_path: Path
    statistics_path: Path
    image_shape: tuple[int, int, int]  # height, width, channels
    num_classes: int
    warnings: tuple[str, ...] = ()  # data problems that did not stop the run (leakage, imbalance, drift)
    summary: str = ""  # one line for the run summary: split sizes, image shape, classes, warnings


@dataclass(frozen=True)
class Normalization:
    """Preprocess's output: pixel statistics of the training split, baked into the model."""

    normalization_path: Path
    mean: float
    std: float


@dataclass(frozen=True)
class TrainedModel:
    """Train's output: the Keras model as trained (its own precision policy) and its history."""

    model_path: Path
    precision: str
    history_path: Path
    weights_sha256: str  # identifies the trained weights, e.g. to tell whether an export is this model
    replicas: int  # devices trained on in parallel (1 unless train.strategy mirrored over several)


@dataclass(frozen=True)
class Metrics:
    """Evaluate's output: test metrics, also in `metrics_path`."""

    metrics_path: Path
    test_loss: float
    test_accuracy: float
    blessed: bool  # good enough to export: above evaluate.min_accuracy, no regression from the baseline
    blessing_reason: str


@dataclass(frozen=True)
class ExportedModel:
    """Export's output: one whole TF Serving version folder."""

    version_dir: Path
    version: int
    onnx_path: Path
    parity_max_abs_diff: float


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


def version_dirs(model_dir: Path) -> list[Path]:
    """The exported version folders of one model (TF Serving layout), oldest number first."""
    versions = [path for path in model_dir.iterdir() if path.name.isdigit()] if model_dir.is_dir() else []
    return sorted(versions, key=lambda path: int(path.name))


def split_path(splits_dir: Path, split: str) -> Path:
    """Where ingest keeps one split."""
    return splits_dir / f"{split}.npz"


def load_split(splits: Splits, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one split's images and labels written by ingest."""
    with np.load(split_path(splits.splits_dir, split), allow_pickle=False) as data:
        return data["images"], data["labels"]
