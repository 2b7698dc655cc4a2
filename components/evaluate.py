"""Evaluate: test loss and accuracy, per-class precision/recall/F1 and the confusion matrix."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import tensorflow as tf
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, precision_recall_fscore_support

from components.artifacts import Metrics, Splits, TrainedModel
from components.blessing import Blessing, ChanceTest
from components.config import EvaluateConfig
from components.model import load_trained
from components.saved_models import Baseline, ModelKind, kind_of
from components.shards.layout import split_files, split_labels
from components.shards.tf_reader import parse_examples

log = logging.getLogger(__name__)


def evaluate(config: EvaluateConfig, trained: TrainedModel, splits: Splits, out_dir: Path,
             baseline: Baseline | None = None) -> Metrics:
    """Score the trained model on the untouched test split, decide whether to bless it, write JSON.

    Args:
        config: the `evaluate` section.
        trained: train's output.
        splits: ingest's output: the test split is scored; the training split's labels give the
            commonest class, which the model must beat (see `chance_test`).
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
    model = load_trained(trained.network_path, trained.model_path)
    probabilities = model.predict(batches_of_test_split(splits, config.batch_size), verbose=0)
    metrics = classification_metrics(labels, probabilities, splits.class_names)
    blessing = _decide(config, metrics["test_accuracy"], probabilities.argmax(axis=1) == labels, splits, baseline)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / "blessing.json").write_text(json.dumps(blessing.to_json(), indent=2))
    # What the report needs to show the mistakes, so it need not load the model again.
    np.savez_compressed(out_dir / "predictions.npz", probabilities=probabilities.astype(np.float32))
    log.info("evaluate: test accuracy %.4f, loss %.4f; %s", metrics["test_accuracy"], metrics["test_loss"],
             blessing.reason)
    return Metrics(out_dir / "metrics.json", out_dir / "blessing.json", metrics["test_loss"],
                   metrics["test_accuracy"], blessing.blessed, blessing.reason, out_dir / "predictions.npz")


def _decide(config: EvaluateConfig, accuracy: float, correct: np.ndarray, splits: Splits,
            baseline: Baseline | None) -> Blessing:
    """The chance test and the baseline's score on the same test split (`correct`: per test image), then `bless`."""
    chance = chance_test(int(correct.sum()), len(correct), split_labels(splits, "train"), splits.class_names)
    kind = ModelKind(splits.image_shape, splits.class_names)
    comparable = baseline is not None and _comparable(baseline.version_dir, kind)
    # A comparable baseline is scored whatever the decision, so the change from it is recorded (and reported).
    baseline_accuracy = _baseline_accuracy(baseline.version_dir, splits) if comparable else None
    return bless(config, accuracy, chance, baseline.version_dir if comparable else None, baseline_accuracy)


def batches_of_test_split(splits: Splits, batch_size: int) -> tf.data.Dataset:
    """The test split's images as float32 batches, streamed from its shards in stored order.

    Args:
        splits: ingest's output.
        batch_size: images per batch (`evaluate.batch_size`).

    Returns:
        A dataset of float32 [b, H, W, C] raw pixel values (0..255), without labels.
    """
    parse = parse_examples(splits.image_shape, splits.dtype)
    # A TFRecord reader does not know its length; told it, Keras's predict stops after the last batch
    # instead of running into the end ("Your input ran out of data"), and a wrong count is an error.
    return (tf.data.TFRecordDataset([str(path) for path in split_files(splits, "test")])
            .apply(tf.data.experimental.assert_cardinality(splits.num_examples["test"]))
            .batch(batch_size)
            .map(lambda serialized: tf.cast(parse(serialized)[0], tf.float32), num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def chance_test(num_correct: int, num_examples: int, train_labels: np.ndarray,
                class_names: tuple[str, ...]) -> ChanceTest:
    """Test `num_correct` of `num_examples` against always answering the training split's commonest class.

    Args:
        num_correct: test images the model classified correctly.
        num_examples: test images.
        train_labels: the training split's labels: what a model could learn the class shares from.
        class_names: the classes, by label.

    Returns:
        The commonest class, its share and the one-sided p-value.
    """
    counts = np.bincount(train_labels, minlength=len(class_names))
    commonest = int(counts.argmax())
    share = float(counts[commonest] / counts.sum())
    p_value = binomtest(num_correct, num_examples, share, alternative="greater").pvalue
    return ChanceTest(class_names[commonest], share, num_correct, num_examples, float(p_value))


def bless(config: EvaluateConfig, accuracy: float, chance: ChanceTest, baseline_dir: Path | None = None,
          baseline_accuracy: float | None = None) -> Blessing:
    """Blessed unless a rule refuses it, checked in this order.

    1. The test accuracy is below `evaluate.min_accuracy`.
    2. It is no better than always answering the commonest training class: the chance test's p-value is
       at least `evaluate.max_p_value` (1 turns this rule off).
    3. It is more than `evaluate.max_regression` below the comparable baseline's.

    Args:
        config: the `evaluate` section.
        accuracy: the new model's test accuracy.
        chance: the model's chance test (`chance_test`).
        baseline_dir: the comparable exported version; None when there is none.
        baseline_accuracy: its accuracy on the same test split.

    Returns:
        The decision and its reason.
    """
    rules = {"min_accuracy": config.min_accuracy, "max_p_value": config.max_p_value,
             "max_regression": config.max_regression}
    decision = Blessing(True, "", None, accuracy, chance, str(baseline_dir) if baseline_dir else None,
                        baseline_accuracy, rules)
    named = f"baseline {baseline_accuracy:.4f} ({baseline_dir.parent.name}/{baseline_dir.name})" \
        if baseline_dir is not None and baseline_accuracy is not None else ""
    against_chance = (f"always answering '{chance.commonest_class}' ({chance.commonest_share:.4f} of the training "
                      f"images) on {chance.num_examples:,} test images")
    refusals = (
        ("evaluate.min_accuracy", accuracy < config.min_accuracy,
         f"test accuracy {accuracy:.4f} < evaluate.min_accuracy {config.min_accuracy}"),
        ("evaluate.max_p_value", config.max_p_value < 1 and chance.p_value >= config.max_p_value,
         f"test accuracy {accuracy:.4f} is no better than {against_chance} "
         f"({_p_value_text(chance.p_value, config.max_p_value)} >= evaluate.max_p_value {config.max_p_value})"),
        ("evaluate.max_regression", bool(named) and accuracy < baseline_accuracy - config.max_regression,
         f"test accuracy {accuracy:.4f} < {named} - evaluate.max_regression {config.max_regression}"),
    )
    for setting_name, refused, why in refusals:
        if refused:
            return dataclasses.replace(decision, blessed=False, reason=f"not blessed: {why}", refused_by=setting_name)
    evidence = (f", better than {against_chance} ({_p_value_text(chance.p_value, config.max_p_value)})"
                if config.max_p_value < 1 else "")
    compared = f"; vs {named}" if named else "; no comparable baseline"
    return dataclasses.replace(decision, reason=f"blessed: test accuracy {accuracy:.4f}{evidence}{compared}")


def _p_value_text(p_value: float, threshold: float) -> str:
    """`p = 0.41`, `p < 0.0001`; with more digits where two would round onto the threshold."""
    if p_value < 1e-4:
        return "p < 0.0001"
    text = f"{p_value:.2g}"
    return f"p = {p_value:.6g}" if float(text) == threshold != p_value else f"p = {text}"


def _comparable(baseline_dir: Path, kind: ModelKind) -> bool:
    """Whether the baseline is of this kind of model (`ModelKind`: export refuses another kind under one name)."""
    theirs = kind_of(baseline_dir)
    if theirs != kind:
        log.warning("evaluate: baseline %s takes %s, this model %s: not compared", baseline_dir, theirs.describe(),
                    kind.describe())
    return theirs == kind


def _baseline_accuracy(baseline_dir: Path, splits: Splits) -> float:
    """The exported baseline's accuracy on this test split, streamed in batches."""
    labels = split_labels(splits, "test")
    serving = tf.saved_model.load(str(baseline_dir)).signatures["serving_default"]
    predicted = [serving(pixels=pixels)["probabilities"].numpy().argmax(axis=1)
                 for pixels in batches_of_test_split(splits, BASELINE_BATCH)]
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
