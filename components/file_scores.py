"""What each exported file scores: its size, its test accuracy, how often it agrees with the Keras model, and
how fast it answers; and whether an int8 file loses too much accuracy to be published.

Export scores every file it writes (`metadata.json`'s `files`, the model card, report.html), so a consumer
choosing between SavedModel, ONNX, LiteRT and their int8 twins reads numbers, not promises.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from components.model_files import FLOAT_TWIN, model_file
from components.speed import Speed, measure_speed

SCORING_BATCH = 256  # images per call while scoring: the test split is read, and run, this many at a time
Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class FileScore:
    """One exported file, measured."""

    backend: str
    file_name: str
    runtime: str
    bytes: int  # on disk; for the SavedModel, its .pb files and variables/
    num_images: int  # test images scored
    test_accuracy: float  # on them
    agreement: float  # share of them on which its top class is the Keras model's
    speed: Speed | None  # None: export.measure_speed=false

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def scored_indices(num_test: int, num_scored: int) -> np.ndarray:
    """`num_scored` positions spread evenly over a test split of `num_test` (all of it when it is no larger):
    a folder's test split is stored class by class, so its first images would be of its first classes."""
    if num_scored >= num_test:
        return np.arange(num_test)
    return np.unique(np.linspace(0, num_test - 1, num_scored).round().astype(np.int64))


def score_files(version_dir: Path, backends: Iterable[str], runner: Callable[[str, int], Runner],
                batches: Iterable[tuple[np.ndarray, np.ndarray]], keras_classes: Callable[[np.ndarray], np.ndarray],
                measure: bool) -> dict[str, FileScore]:
    """Score files of `version_dir` on test images that arrive a batch at a time.

    Args:
        backends: the files to score, by backend.
        runner: makes a backend's runner for calls of about the given number of images.
        batches: (uint8 images, labels) of the scored test images, at most `SCORING_BATCH` at a time.
        keras_classes: the Keras model's top classes for a float32 batch.
        measure: time each file too (`components.speed`), on the first batch.

    Returns:
        The score of each backend's file.
    """
    runners = {backend: runner(backend, SCORING_BATCH) for backend in backends}
    classes: dict[str, list[np.ndarray]] = {backend: [] for backend in runners}
    labels, expected, sample = [], [], None
    for images, batch_labels in batches:
        pixels = images.astype(np.float32)
        sample = pixels if sample is None else sample
        labels.append(batch_labels)
        expected.append(keras_classes(pixels))
        for backend, run in runners.items():
            classes[backend].append(run(pixels).argmax(1))
    all_labels, all_expected = np.concatenate(labels), np.concatenate(expected)
    scores = {}
    for backend, run in runners.items():
        answers, file = np.concatenate(classes[backend]), model_file(backend)
        scores[backend] = FileScore(
            backend, file.file_name, file.runtime, file_bytes(version_dir, backend), len(all_labels),
            test_accuracy=float(np.mean(answers == all_labels)), agreement=float(np.mean(answers == all_expected)),
            speed=measure_speed(runner(backend, 1), run, sample) if measure else None)
    return scores


def file_bytes(version_dir: Path, backend: str) -> int:
    """Size on disk of what a backend loads (the SavedModel: its .pb files and variables/)."""
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
