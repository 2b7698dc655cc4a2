"""Report: one self-contained `report.html` that says how good the model is and where it fails.

Written for people who will not read JSON: the headline first, then per-class results, the
confusion matrix, the most confident mistakes, the search for the training settings (when tune ran),
training, data, the model and how to reproduce it.
Charts are matplotlib PNGs inlined as data URIs, so the file makes no network request. The test
results, the mistakes and the run's settings also go to TensorBoard (its HParams dashboard).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from components import plots
from components.artifacts import (
    ExportedModel,
    Metrics,
    Report,
    SchemaAndStatistics,
    Splits,
    TrainedModel,
    TrainingRecord,
    Tuning,
)
from components.blessing import Blessing
from components.config import ReportConfig
from components.findings import class_results, confusions, headline, verdict
from components.saved_models import read_metadata
from components.shards.layout import split_labels
from components.shards.record_reader import read_images_at
from components.tensorboard_log import EventLog

log = logging.getLogger(__name__)

TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("components", "templates"),
                               autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                               lstrip_blocks=True)


def report(config: ReportConfig, splits: Splits, schema: SchemaAndStatistics, trained: TrainedModel, metrics: Metrics,
           exported: ExportedModel | None, changed_settings: dict[str, Any], model_name: str, out_dir: Path,
           tensorboard_dir: Path, run_id: str, command: str = "", reproduction: dict | None = None,
           config_values: dict[str, Any] | None = None, tuning: Tuning | None = None) -> Report:
    """Write `report.html` from the run's artifacts, and the test results to TensorBoard.

    Args:
        config: the `report` section.
        splits: ingest's output: split sizes, test images for the mistakes, a sample per class.
        schema: validate's output: the statistics (class balance) and the data warnings.
        trained: train's output: history and training record.
        metrics: evaluate's output: metrics, blessing and the test predictions.
        exported: export's output, or None when the model was not exported (not blessed).
        changed_settings: the `section.key` values that differ from their defaults, shown on the page.
        model_name: `export.model_name`, the page's title when the model was not exported.
        out_dir: folder for `report.html`; created.
        tensorboard_dir: the run's TensorBoard folder: `test/` gets the test scalars and mistakes,
            the folder itself the HParams record.
        run_id, command, reproduction: the run that wrote the report, as the orchestrator records it.
        config_values: every `section.key` value, for TensorBoard's HParams (only the changed ones if None).
        tuning: tune's output, shown in a Tuning section; None when tune did not run.

    Returns:
        The report's path.
    """
    results = metrics.read()
    labels = split_labels(splits, "test")
    with np.load(metrics.predictions_path) as predictions:
        probabilities = predictions["probabilities"]
    mistakes = _mistakes(labels, probabilities, config.mistakes, splits.class_names)
    mistake_images = read_images_at(splits, "test", [mistake.index for mistake in mistakes])
    record, title_name = trained.record(), _model_name(exported, model_name)
    blessing = metrics.blessing()
    page = {
        "title": f"{title_name}: test accuracy {results['test_accuracy']:.2%}",
        "headline": _headline(results, blessing, exported),
        "decision": _decision(blessing),
        "classes": class_results(results),
        "confusion_png": _data_uri(plots.confusion_heatmap(np.array(results["confusion_matrix"]),
                                                           splits.class_names)),
        "confusions": confusions(results)[:5],
        "mistakes": {"count": int((probabilities.argmax(axis=1) != labels).sum()),
                     "shown": [{**dataclasses.asdict(mistake), "percent": percent(mistake.probability),
                                "png": _data_uri(plots.thumbnail(image))}
                               for mistake, image in zip(mistakes, mistake_images)]},
        "tuning": _tuning(tuning) if tuning else None,
        "training": _training(trained, record),
        "data": _data(splits, schema),
        "model": _model(trained, record, exported),
        "reproduce": _reproduce(splits, changed_settings, run_id, command, reproduction),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / "report.html"
    report_path.write_text(TEMPLATES.get_template("report.html.j2").render(**page))
    _log_to_tensorboard(tensorboard_dir, results, _mistakes_grid(mistake_images, mistakes),
                        config_values or changed_settings, f"{title_name}/{run_id}", record.best_epoch - 1)
    log.info("report: %d mistakes shown", len(mistakes))
    return Report(report_path)


def most_confident_mistakes(labels: np.ndarray, probabilities: np.ndarray, count: int) -> np.ndarray:
    """Indices of misclassified images, the most confident (highest wrong probability) first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:count]


def percent(probability: float) -> str:
    """A probability in percent, rounded down where rounding would claim a certainty it is not."""
    if probability >= 0.995:
        return f"{math.floor(probability * 1000) / 10:.1f}"
    return f"{100 * probability:.0f}"


@dataclass(frozen=True)
class Mistake:
    """One misclassified test image: where it is, what it is, what the model said and how sure it was."""

    index: int
    true: str
    said: str
    probability: float


def _mistakes(labels: np.ndarray, probabilities: np.ndarray, count: int,
              class_names: tuple[str, ...]) -> list[Mistake]:
    predicted = probabilities.argmax(axis=1)
    return [Mistake(int(i), class_names[labels[i]], class_names[predicted[i]], float(probabilities[i, predicted[i]]))
            for i in most_confident_mistakes(labels, probabilities, count)]


def _mistakes_grid(images: np.ndarray, mistakes: list[Mistake]) -> bytes | None:
    """The mistakes (`images`: theirs, in order) in one labelled image, for TensorBoard; None without any."""
    if not mistakes:
        return None
    titles = [f"true: {mistake.true}\nsaid: {mistake.said} {mistake.probability:.0%}" for mistake in mistakes]
    return plots.image_grid(images, titles, title_color=plots.MISTAKE_COLOR)


def _headline(results: dict, blessing: Blessing, exported: ExportedModel | None) -> dict[str, Any]:
    """The result in plain words first, then accuracy, the change from the previous export, the commonest mistake.

    The engineer's terms (blessing, baseline, p-value) stay out of it: they are in `_decision`, further down.
    """
    accuracy, total = results["test_accuracy"], results["num_examples"]
    change = None
    if blessing.baseline and blessing.baseline_accuracy is not None:
        change = {"points": 100 * (accuracy - blessing.baseline_accuracy),
                  "baseline_accuracy": blessing.baseline_accuracy, "version": _version_name(Path(blessing.baseline))}
    published = _version_name(exported.version_dir) if exported else None
    return {"verdict": verdict(accuracy, blessing, published), "ready": blessing.blessed, "accuracy": accuracy,
            "num_correct": round(accuracy * total), "num_examples": total, "change": change,
            "sentence": headline(results), "published": published}


def _version_name(version_dir: Path) -> str:
    """`saved_models/digits/3` in words: `digits version 3`."""
    return f"{version_dir.parent.name} version {version_dir.name}"


def _decision(blessing: Blessing) -> dict[str, Any]:
    """The blessing in the engineer's terms: the reason, the chance test, the baseline and the settings applied."""
    return {"reason": blessing.reason, "chance": blessing.chance, "rules": blessing.rules,
            "baseline": "/".join(Path(blessing.baseline).parts[-2:]) if blessing.baseline else None,
            "baseline_accuracy": blessing.baseline_accuracy}


def _training(trained: TrainedModel, record: TrainingRecord) -> dict[str, Any]:
    history = json.loads(trained.history_path.read_text())
    charts = plots.training_curves(history, record.best_epoch)
    return {"record": record, "charts": [_data_uri(png) for png in charts],
            "kept_val_accuracy": history["val_accuracy"][record.best_epoch - 1]}


def _tuning(tuning: Tuning) -> dict[str, Any]:
    """The search in numbers, its trials over time, each setting's importance, the chosen values and the config's."""
    record = tuning.read()
    trials, defaults = record["trials"], record["defaults"]
    states = [trial["state"] for trial in trials]
    return {"num_trials": len(trials), "num_complete": states.count("complete"), "num_pruned": states.count("pruned"),
            "failed": [trial for trial in trials if trial["state"] == "fail"],
            "seconds": record["seconds"], "budget_seconds": record["budget_seconds"],
            "best_trial": record["best_trial"], "best_val_accuracy": record["best_val_accuracy"],
            "first_started": min((trial["started"] for trial in trials if trial["started"] is not None),
                                 default=record["seconds"]),
            "trials_png": _data_uri(plots.tuning_trials(trials, record["best_trial"], record["budget_seconds"])),
            "importance_png": _data_uri(plots.setting_importance(record["importance"])) if record["importance"]
            else None,
            "settings": [{"key": key, "searched": _searched_text(record["space"].get(key)),
                          "default": _setting_text(defaults.get(key)), "chosen": _setting_text(value),
                          "changed": value != defaults.get(key)} for key, value in record["best"].items()]}


def _setting_text(value: Any) -> str:
    """A setting's value as the page shows it: floats to 4 significant digits, lists as `[64, 128]`."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_setting_text(item) for item in value) + "]"
    return "-" if value is None else str(value)


def _searched_text(space: list | dict | None) -> str:
    """A dimension of `tuning.json`'s `space` in words, read as `tune.space` reads it (components/tune_space.py)."""
    if space is None:
        return "-"
    values = space["choices"] if isinstance(space, dict) else space
    is_range = not isinstance(space, dict) and len(values) in (2, 3) and values[2:] in ([], ["log"]) and all(
        isinstance(end, (int, float)) and not isinstance(end, bool) for end in values[:2])
    if is_range:
        return f"{_setting_text(values[0])} to {_setting_text(values[1])}" + (", log scale" if values[2:] else "")
    return "one of " + ", ".join(_setting_text(value) for value in values)


def _data(splits: Splits, schema: SchemaAndStatistics) -> dict[str, Any]:
    """Split sizes, class balance, validate's warnings and one training image per class."""
    statistics_by_split = json.loads(schema.statistics_path.read_text())
    counts = {split: statistics_by_split[split]["class_counts"] for split in ("train", "val", "test")}
    labels = split_labels(splits, "train")
    present = [index for index in range(len(splits.class_names)) if (labels == index).any()]
    # Each class's first training image; train is stored shuffled, so they are among the first records.
    firsts = read_images_at(splits, "train", [int(np.argmax(labels == index)) for index in present])
    samples = [{"name": splits.class_names[index], "png": _data_uri(plots.thumbnail(image))}
               for index, image in zip(present, firsts)]
    return {"num_examples": splits.num_examples, "image_shape": schema.image_shape, "warnings": schema.warnings,
            "balance_png": _data_uri(plots.class_balance(counts, splits.class_names)), "samples": samples}


def _model(trained: TrainedModel, record: TrainingRecord, exported: ExportedModel | None) -> dict[str, Any]:
    """Parameters, and each exported file as export scored it (size, accuracy, agreement, speed)."""
    facts: dict[str, Any] = {"network": trained.network, "starting_weights": record.starting_weights,
                             "parent": trained.parent, "parameters": record.parameters,
                             "trainable_parameters": record.trainable_parameters,
                             "frozen_parameters": record.frozen_parameters, "head_epochs": record.head_epochs,
                             "epochs_run": record.epochs_run,
                             "precision": trained.precision, "export": None}
    if exported is not None:
        metadata = read_metadata(exported.version_dir)
        facts["export"] = {"version_dir": str(exported.version_dir),
                           "files": list(metadata.get("files", {}).values()), "int8": metadata.get("int8"),
                           "left_out": metadata.get("left_out", {})}
    return facts


def _reproduce(splits: Splits, changed_settings: dict[str, Any], run_id: str, command: str,
               reproduction: dict | None) -> dict:
    git = (reproduction or {}).get("git") or {}
    return {"run_id": run_id, "data_fingerprint": splits.data_sha256, "command": command or "-",
            "commit": git.get("commit", "not a git checkout"), "dirty": git.get("dirty", False),
            "changed": changed_settings}


def _model_name(exported: ExportedModel | None, model_name: str) -> str:
    return exported.version_dir.parent.name if exported else model_name


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _log_to_tensorboard(tensorboard_dir: Path, results: dict, mistakes_png: bytes | None,
                        values: dict[str, Any], trial_id: str, step: int) -> None:
    """Test loss and accuracy and the mistakes under `test/`, at the kept epoch's step (Keras counts epochs
    from 0 there); the settings as this run's HParams."""
    with EventLog(tensorboard_dir / "test") as test_log:
        test_log.scalar("test_accuracy", results["test_accuracy"], step)
        test_log.scalar("test_loss", results["test_loss"], step)
        if mistakes_png:
            test_log.image("misclassified test images", mistakes_png, step,
                           "the most confident mistakes first: true class, predicted class and its probability")
    with EventLog(tensorboard_dir) as run_log:
        run_log.hparams(values, trial_id=trial_id)
