"""Evaluate: test loss and accuracy, per-class precision/recall/F1 and the confusion matrix."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, precision_recall_fscore_support

from components.artifacts import Metrics, Splits, TrainedModel, load_split
from pipeline.config import EvaluateConfig

log = logging.getLogger(__name__)


def evaluate(config: EvaluateConfig, trained: TrainedModel, splits: Splits, out_dir: Path) -> Metrics:
    """Score the trained model on the untouched test split and write `metrics.json`.

    Args:
        config: the `evaluate` section.
        trained: train's output.
        splits: ingest's output; only `test` is read.
        out_dir: folder for `metrics.json`; created.

    Returns:
        Test loss and accuracy (the full report is in the file).
    """
    images, labels = load_split(splits, "test")
    model = keras.models.load_model(trained.model_path, compile=False)
    probabilities = model.predict(images.astype(np.float32), batch_size=config.batch_size, verbose=0)
    metrics = classification_metrics(labels, probabilities, splits.class_names)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2))
    log.info("evaluate: test accuracy %.4f, loss %.4f", metrics["test_accuracy"], metrics["test_loss"])
    return Metrics(path, metrics["test_loss"], metrics["test_accuracy"])


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """Loss, accuracy, per-class precision/recall/F1/support and the confusion matrix (rows: true)."""
    classes = list(range(len(class_names)))
    predictions = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0)
    return {
        "test_loss": float(log_loss(labels, _renormalized(probabilities), labels=classes)),
        "test_accuracy": float(accuracy_score(labels, predictions)),
        "num_examples": int(len(labels)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
        },
        "confusion_matrix": confusion_matrix(labels, predictions, labels=classes).tolist(),
    }


def _renormalized(probabilities: np.ndarray) -> np.ndarray:
    """float64 rows that sum to 1 (a float32 softmax is off by ~1e-7, which log_loss warns about)."""
    probabilities = probabilities.astype(np.float64)
    return probabilities / probabilities.sum(axis=1, keepdims=True)
