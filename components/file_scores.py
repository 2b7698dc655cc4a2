"""What each exported file scores: its size, its test accuracy, how often it agrees with the float model, and
how fast it answers; and whether an int8 file loses too much accuracy to be published.

Export scores every file it writes (`metadata.json`'s `files`, the model card, report.html), so a consumer
choosing between SavedModel, ONNX, LiteRT and their int8 twins reads numbers, not promises.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from components.model_files import FLOAT_TWIN, model_file
from components.speed import Speed, measure_speed

SCORING_BATCH = 256  # images per call while scoring: bounds the activations' memory on large test splits
Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class FileScore:
    """One exported file, measured."""

    backend: str
    file_name: str
    runtime: str
    bytes: int  # on disk; for the SavedModel, saved_model.pb and variables/
    num_images: int  # test images scored
    test_accuracy: float  # on them
    agreement: float  # share of those images on which its top class is the float Keras model's
    speed: Speed | None  # None: export.measure_speed=false

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def score_file(version_dir: Path, backend: str, runner: Callable[[int], Runner], images: np.ndarray,
               labels: np.ndarray, float_classes: np.ndarray, measure: bool) -> FileScore:
    """Score one file of `version_dir` on test `images`.

    Args:
        runner: makes the file's runner for calls of about the given number of images.
        images: uint8 test pixels; `labels` their classes; `float_classes` the Keras model's top classes.
        measure: time it too (`components.speed`).
    """
    batched = runner(SCORING_BATCH)
    pixels = images.astype(np.float32)
    classes = np.concatenate([batched(pixels[start:start + SCORING_BATCH]).argmax(1)
                              for start in range(0, len(pixels), SCORING_BATCH)])
    speed = measure_speed(runner(1), batched, pixels) if measure else None
    file = model_file(backend)
    return FileScore(backend, file.file_name, file.runtime, file_bytes(version_dir, backend), len(images),
                     test_accuracy=float(np.mean(classes == labels)),
                     agreement=float(np.mean(classes == float_classes)), speed=speed)


def file_bytes(version_dir: Path, backend: str) -> int:
    """Size on disk of what a backend loads (the SavedModel: saved_model.pb, fingerprint.pb and variables/)."""
    if backend != "savedmodel":
        return model_file(backend).path(version_dir).stat().st_size
    files = [path for path in version_dir.rglob("*")
             if path.is_file() and (path.name.endswith(".pb") or "variables" in path.relative_to(version_dir).parts)]
    return sum(path.stat().st_size for path in files)


def int8_refusal(scores: dict[str, FileScore], backend: str, max_drop_points: float) -> str:
    """Why an int8 file must not be published ("" = it may be): it lost more than `max_drop_points`
    percentage points of test accuracy against its float twin."""
    twin = scores[FLOAT_TWIN[backend]]
    drop = round((twin.test_accuracy - scores[backend].test_accuracy) * 100, 9)  # 0.99 - 0.985 is 0.50000000000000004
    if drop <= max_drop_points:
        return ""
    return (f"test accuracy {scores[backend].test_accuracy:.4f} against {twin.test_accuracy:.4f} for "
            f"{twin.file_name}: {drop:.2f} points lost, more than export.int8_max_drop={max_drop_points:g}")
