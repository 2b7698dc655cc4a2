"""Evaluate: test loss and accuracy, per-class precision/recall/F1 and the confusion matrix."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, precision_recall_fscore_support

from components.artifacts import Baseline, Metrics, Splits, TrainedModel, model_kind
from components.config import EvaluateConfig
from components.model import as_float32
from components.shards import parse_examples, split_files, split_labels

log = logging.getLogger(__name__)


def evaluate(config: EvaluateConfig, trained: TrainedModel, splits: Splits, out_dir: Path,
             baseline: Baseline | None = None) -> Metrics:
    """Score the trained model on the untouched test split, decide whether to bless it, write JSON.

    Args:
        config: the `evaluate` section.
        trained: train's output.
        splits: ingest's output; only `test` is read.
        out_dir: folder for `metrics.json` (metrics only: byte-identical for identical models),
            `blessing.json` (the decision, the baseline and the reason) and `predictions.npz` (the
            test split's class probabilities); created.
        baseline: an exported version to compare with (see `find_baseline`), scored on the same
            test split; None when there is none.

    Returns:
        Test loss and accuracy, and the blessing (the full report is in the files).
    """
    labels = split_labels(splits, "test")
    # The float32 twin is what export publishes: the accuracy recorded is the shipped model's.
    model = as_float32(keras.models.load_model(trained.model_path, compile=False))
    probabilities = model.predict(test_pixels(splits, config.batch_size), verbose=0)
    metrics = classification_metrics(labels, probabilities, splits.class_names)
    blessing = bless(config, metrics["test_accuracy"], baseline.version_dir if baseline else None, splits, labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / "blessing.json").write_text(json.dumps(blessing, indent=2))
    # What the report needs to show the mistakes, so it need not load the model again.
    np.savez_compressed(out_dir / "predictions.npz", probabilities=probabilities.astype(np.float32))
    log.info("evaluate: test accuracy %.4f, loss %.4f; %s", metrics["test_accuracy"], metrics["test_loss"],
             blessing["reason"])
    return Metrics(out_dir / "metrics.json", out_dir / "blessing.json", metrics["test_loss"],
                   metrics["test_accuracy"], blessing["blessed"], blessing["reason"], out_dir / "predictions.npz")


def test_pixels(splits: Splits, batch_size: int) -> tf.data.Dataset:
    """The test split's images as float32 batches, streamed from its shards in stored order.

    Args:
        splits: ingest's output.
        batch_size: images per batch (`evaluate.batch_size`).

    Returns:
        A dataset of float32 [b, H, W, C] raw pixel values (0..255), without labels.
    """
    parse = parse_examples(splits.image_shape, splits.dtype)
    return (tf.data.TFRecordDataset([str(path) for path in split_files(splits, "test")])
            .batch(batch_size)
            .map(lambda serialized: tf.cast(parse(serialized)[0], tf.float32), num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def bless(config: EvaluateConfig, accuracy: float, baseline_dir: Path | None, splits: Splits,
          labels: np.ndarray) -> dict:
    """Blessed when accuracy >= min_accuracy and, against a comparable baseline, drops <= max_regression.

    A comparable baseline is scored whatever the decision, so the change from it is recorded (and
    reported) for an unblessed model too.

    Args:
        config: the `evaluate` section.
        accuracy: the new model's test accuracy.
        baseline_dir: the exported version to compare with; None when there is none.
        splits: ingest's output; the baseline is scored on its test split.
        labels: the test split's labels, in stored order.

    Returns:
        The decision: blessed, the accuracies, the baseline and the reason (`blessing.json`).
    """
    comparable = baseline_dir is not None and _comparable(baseline_dir, splits.class_names, splits.image_shape)
    baseline_accuracy = _baseline_accuracy(baseline_dir, splits, labels) if comparable else None
    decision = {"blessed": True, "test_accuracy": accuracy, "baseline": str(baseline_dir) if comparable else None,
                "baseline_accuracy": baseline_accuracy}
    named = f"baseline {baseline_accuracy:.4f} ({baseline_dir.parent.name}/{baseline_dir.name})" if comparable else ""
    if accuracy < config.min_accuracy:
        return {**decision, "blessed": False,
                "reason": f"not blessed: test accuracy {accuracy:.4f} < evaluate.min_accuracy {config.min_accuracy}"}
    if baseline_accuracy is None:
        return {**decision, "reason": f"blessed: test accuracy {accuracy:.4f}, no comparable baseline"}
    if accuracy < baseline_accuracy - config.max_regression:
        return {**decision, "blessed": False, "reason": f"not blessed: test accuracy {accuracy:.4f} < {named} - "
                                                        f"evaluate.max_regression {config.max_regression}"}
    return {**decision, "reason": f"blessed: test accuracy {accuracy:.4f} vs {named}"}


def _comparable(baseline_dir: Path, class_names: tuple[str, ...], image_shape: tuple[int, ...]) -> bool:
    """Whether the baseline takes these images and predicts these classes (export refuses otherwise)."""
    theirs = model_kind(baseline_dir)
    if theirs == (tuple(image_shape), class_names):
        return True
    log.warning("evaluate: baseline %s takes %s images of classes %s, not %s images of %s: not compared",
                baseline_dir, list(theirs[0]), list(theirs[1]), list(image_shape), list(class_names))
    return False


def _baseline_accuracy(baseline_dir: Path, splits: Splits, labels: np.ndarray) -> float:
    """The exported baseline's accuracy on this test split, streamed in batches."""
    serving = tf.saved_model.load(str(baseline_dir)).signatures["serving_default"]
    predicted = [serving(pixels=pixels)["probabilities"].numpy().argmax(axis=1)
                 for pixels in test_pixels(splits, BASELINE_BATCH)]
    return float(accuracy_score(labels, np.concatenate(predicted)))


BASELINE_BATCH = 1024  # images per call of the baseline's serving signature


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
