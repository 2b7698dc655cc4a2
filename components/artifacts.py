"""The artifacts stages hand to each other: paths plus the small metadata a later stage needs.

Every artifact describes itself, so the orchestrator, the manifest and the lineage need not know any
stage's fields: `fingerprint` identifies its content (what a later stage's cache key covers),
`facts()` names the results worth recording, `summary()` gives the run summary's lines.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.blessing import Blessing
from components.findings import worst_classes
from components.hashing import file_sha256, json_sha256
from components.saved_models import METADATA_FILE

SPLITS = ("train", "val", "test")


class Artifact:
    """What every artifact can say about itself."""

    @property
    def fingerprint(self) -> str:
        """sha256 of the content later stages read: equal fingerprints, interchangeable artifacts."""
        raise NotImplementedError

    def facts(self) -> dict[str, Any]:
        """Named results for the manifest and the lineage database (JSON-ready)."""
        return {}

    def still_holds(self) -> bool:
        """Whether what it describes outside its cache entry is still as it was (a bucket's copy, say): a
        cached artifact is reused only then. Its files and fingerprint the cache checks itself."""
        return True

    def summary(self) -> list[str]:
        """Lines for the summary printed at the end of a run."""
        return []

    def run_files(self) -> dict[str, Path]:
        """Files the orchestrator copies to the top of the run folder, by the name they get there."""
        return {}


@dataclass(frozen=True)
class Splits(Artifact):
    """Ingest's output: per split, TFRecord shards and its labels, described by `splits.json`.

    `components/shards/` holds the format, its writer and its readers (`load_split`, `image_chunks`, ...).
    """

    splits_dir: Path
    data_sha256: str  # of every split's images, labels and shard layout, and the class names
    class_names: tuple[str, ...]
    num_examples: dict[str, int]
    image_shape: tuple[int, int, int]  # height, width, channels of every image
    dtype: str  # NumPy dtype name of the pixels, e.g. uint8 (validate refuses others)
    num_skipped_files: int = 0  # unreadable image files skipped under data.on_bad_file=skip

    @property
    def fingerprint(self) -> str:
        return self.data_sha256

    def facts(self) -> dict[str, Any]:
        return {"data_fingerprint": self.data_sha256, "num_examples": self.num_examples,
                "class_names": list(self.class_names)}


@dataclass(frozen=True)
class SchemaAndStatistics(Artifact):
    """Validate's output: the schema every split was checked against (`schema.json`) and the statistics
    that describe the splits (`statistics.json`: class balance, pixel statistics)."""

    schema_path: Path
    statistics_path: Path
    image_shape: tuple[int, int, int]  # height, width, channels
    num_classes: int
    warnings: tuple[str, ...] = ()  # data problems that did not stop the run (leakage, imbalance, drift)
    description: str = ""  # one line for the run summary: split sizes, image shape, classes, warnings

    @property
    def fingerprint(self) -> str:
        return file_sha256(self.schema_path, self.statistics_path)

    def facts(self) -> dict[str, Any]:
        return {"image_shape": list(self.image_shape), "num_classes": self.num_classes,
                "warnings": list(self.warnings)}

    def summary(self) -> list[str]:
        return [f"data         {self.description}"]


@dataclass(frozen=True)
class Normalization(Artifact):
    """Preprocess's output: pixel statistics of the training split, baked into the model."""

    normalization_path: Path
    mean: float
    std: float

    @property
    def fingerprint(self) -> str:
        return json_sha256([self.mean, self.std])


@dataclass(frozen=True)
class Tuning(Artifact):
    """Tune's output: the values the search chose for train, and its record (`tuning.json`, Optuna's study).

    `tuning.json` holds `best` (section.key -> value), `defaults` (the config's own values of the same
    keys), `best_val_accuracy`, `space`, `seconds`, `budget_seconds`, every trial (`trials`: number,
    state, values, validation accuracy per epoch, start and end seconds) and `importance` (Optuna's).
    """

    tuning_path: Path
    study_path: Path  # study.sqlite: Optuna's storage of the search (optuna.load_study, optuna-dashboard)

    @property
    def fingerprint(self) -> str:
        return file_sha256(self.tuning_path)

    def read(self) -> dict[str, Any]:
        """`tuning.json`."""
        return json.loads(self.tuning_path.read_text())

    def facts(self) -> dict[str, Any]:
        record = self.read()
        states = [trial["state"] for trial in record["trials"]]
        return {"tune_trials": len(states), "tune_pruned": states.count("pruned"), "tune_seconds": record["seconds"],
                "tune_best": record["best"], "tune_best_val_accuracy": record["best_val_accuracy"]}

    def summary(self) -> list[str]:
        facts = self.facts()
        chosen = ", ".join(f"{key}={value}" for key, value in facts["tune_best"].items())
        searched = f"{facts['tune_trials']} trials ({facts['tune_pruned']} pruned) in {facts['tune_seconds']:.0f} s"
        if facts["tune_best_val_accuracy"] is None:
            return [f"tuned        {searched}: no trial finished within the budget; train uses the config as given"]
        return [f"tuned        {searched}: best validation accuracy {facts['tune_best_val_accuracy']:.4f}",
                f"chosen       {chosen}"]


@dataclass(frozen=True)
class TrainingRecord:
    """`training.json`: how training ended, the epoch kept, and how fast it went."""

    epochs_planned: int
    epochs_run: int
    best_epoch: int  # the epoch whose weights were kept, counted from 1
    stopped_by: str  # planned epochs | patience | time budget
    seconds: float  # wall time of training, tracing and validation included
    batch_size: int  # images per step, over all replicas
    images_per_second: float  # of a steady epoch's training steps (tracing and validation left out)
    train_flops_per_image: int  # about 3x the forward pass's (components/model.py forward_flops)
    gflops_per_second: float
    parameters: int  # of the whole model
    trainable_parameters: int = 0  # trained in the last phase (all but batch norms' statistics, without phases)
    frozen_parameters: int = 0  # the others: a frozen body's, batch norms' moving statistics
    starting_weights: str = "random"  # random | imagenet | a weights file | the export warm-started from
    head_epochs: int = 0  # epochs that trained the new head alone, the body frozen; 0 = no such phase

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def read(cls, path: Path) -> TrainingRecord:
        return cls(**json.loads(path.read_text()))


@dataclass(frozen=True)
class TrainedModel(Artifact):
    """Train's output: the Keras model as trained (its own precision policy), its history and record."""

    model_path: Path
    precision: str
    history_path: Path
    weights_sha256: str  # identifies the trained weights, e.g. to tell whether an export is this model
    replicas: int  # devices trained on in parallel, over all workers (1 unless train.strategy spread it)
    training_path: Path  # training.json: epochs run and kept, why it stopped, seconds, images/s
    strategy: str = "single"  # single | mirrored | multi_worker: what train.strategy resolved to
    num_workers: int = 1  # processes that trained it together (train.strategy=multi_worker)
    network_path: Path | None = None  # network.json: how to rebuild the network (components/model.py NetworkSpec)
    network: str = "cnn"  # model.builder: cnn, a backbone's name, or the user's MODULE:FUNCTION
    parent: str = ""  # the export model.init warm-started from, NAME/VERSION (e.g. "mnist/3"); "" = none

    @property
    def fingerprint(self) -> str:
        network = self.network_path.read_text() if self.network_path else None
        return json_sha256([self.weights_sha256, self.precision, network])

    def record(self) -> TrainingRecord:
        """`training.json`."""
        return TrainingRecord.read(self.training_path)

    def facts(self) -> dict[str, Any]:
        record = self.record()
        return {"network": self.network, "precision": self.precision, "replicas": self.replicas,
                "strategy": self.strategy, "workers": self.num_workers, "epochs_run": record.epochs_run,
                "best_epoch": record.best_epoch, "stopped_by": record.stopped_by,
                "train_seconds": record.seconds, "train_images_per_second": record.images_per_second,
                "train_gflops_per_second": record.gflops_per_second,
                **({"parent": self.parent} if self.parent else {}),
                **({"starting_weights": record.starting_weights} if record.starting_weights != "random" else {})}

    def summary(self) -> list[str]:
        record = self.record()
        workers = f" of {self.num_workers} workers" if self.num_workers > 1 else ""
        start = "" if record.starting_weights == "random" else f", from {record.starting_weights}"
        phases = f" (head alone for {record.head_epochs})" if record.head_epochs else ""
        return [f"network      {self.network}, {record.parameters:,} parameters{start}",
                f"trained in   {self.precision} on {self.replicas} replica{'s' * (self.replicas != 1)}{workers}: "
                f"{record.epochs_run} epochs{phases} in {record.seconds:.1f} s ({record.images_per_second:,.0f} "
                f"images/s), kept epoch {record.best_epoch}, stopped by {record.stopped_by}"]


@dataclass(frozen=True)
class Metrics(Artifact):
    """Evaluate's output: test metrics, also in `metrics_path`, and the blessing, in `blessing_path`."""

    metrics_path: Path
    blessing_path: Path
    test_loss: float
    test_accuracy: float
    blessed: bool  # good enough to export: min_accuracy, better than chance (max_p_value), no regression
    blessing_reason: str
    predictions_path: Path  # predictions.npz: `probabilities` [N, classes] of the test split, in its order

    @property
    def fingerprint(self) -> str:  # the predictions too: the report shows the mistakes they hold
        return file_sha256(self.metrics_path, self.blessing_path, self.predictions_path)

    def facts(self) -> dict[str, Any]:
        return {"test_accuracy": self.test_accuracy, "test_loss": self.test_loss, "blessed": self.blessed,
                "blessing_reason": self.blessing_reason}

    def blessing(self) -> Blessing:
        """`blessing.json`: the decision and what it rests on."""
        return Blessing.from_json(json.loads(self.blessing_path.read_text()))

    def read(self) -> dict[str, Any]:
        """`metrics.json`: loss, accuracy, per-class results and the confusion matrix."""
        return json.loads(self.metrics_path.read_text())

    def summary(self) -> list[str]:
        worst = ", ".join(f"{result.name} (F1 {result.f1:.2f})" for result in worst_classes(self.read()))
        return [f"test accuracy {self.test_accuracy:.4f}  (loss {self.test_loss:.4f})",
                f"worst classes {worst}", self.blessing_reason]


@dataclass(frozen=True)
class ExportedModel(Artifact):
    """Export's output: one whole TF Serving version folder."""

    version_dir: Path
    version: int
    onnx_path: Path
    parity_max_abs_diff: float

    @property
    def fingerprint(self) -> str:
        return file_sha256(self.version_dir / METADATA_FILE)

    def facts(self) -> dict[str, Any]:
        metadata = json.loads((self.version_dir / METADATA_FILE).read_text())
        return {"model_name": self.version_dir.parent.name, "version": self.version,
                "version_dir": str(self.version_dir), "onnx_path": str(self.onnx_path),
                "files": sorted(metadata.get("files", {})), "left_out": metadata.get("left_out", {})}

    def summary(self) -> list[str]:
        metadata = json.loads((self.version_dir / METADATA_FILE).read_text())
        files = metadata.get("files", {})
        lines = [f"SavedModel   {self.version_dir}", f"ONNX         {self.onnx_path}"]
        lines += [f"LiteRT       {self.version_dir / name}" for name in ("model.tflite",) if name in files]
        lines += [f"int8         {self.version_dir / name}" for name in sorted(files) if "_int8." in name]
        lines += [f"left out     {name}: {reason}" for name, reason in metadata.get("left_out", {}).items()]
        return lines


@dataclass(frozen=True)
class PushedModel(Artifact):
    """Push's output: where an exported version was copied to in a bucket, as recorded in `push.json`."""

    record_path: Path  # push.json: the URL, the bucket's and the local version, the outcome and the files copied
    version_url: str  # <push_to>/<model_name>/<number>, the number the bucket gave the version
    outcome: str  # pushed | already pushed (the bucket held this very version: nothing was copied)
    local_version: int  # its number in saved_models/ (the bucket's is higher when it held that number already)

    @property
    def fingerprint(self) -> str:
        return file_sha256(self.record_path)

    def still_holds(self) -> bool:
        """The bucket's version still holds every file pushed, by name and size, and the same metadata.json
        (one listing, one read): a version deleted from the bucket, wholly or in part, is pushed again.

        Raises:
            UserError: the store fails (no such bucket, denied, unreachable).
        """
        from components import remote  # fsspec, only for a push's artifact

        record = json.loads(self.record_path.read_text())
        published = {item.name: item.size for item in remote.find_objects(self.version_url)}
        if published != record["files"]:
            return False
        metadata = remote.read_bytes(remote.join(self.version_url, METADATA_FILE))
        return hashlib.sha256(metadata).hexdigest() == record["metadata_sha256"]

    def facts(self) -> dict[str, Any]:
        return {"pushed_to": self.version_url, "push": self.outcome}

    def summary(self) -> list[str]:
        renumbered = self.version_url.rpartition("/")[2] != str(self.local_version)
        return [f"pushed       {self.version_url} ({self.outcome}"
                f"{f', local version {self.local_version}' if renumbered else ''})"]


@dataclass(frozen=True)
class Report(Artifact):
    """Report's output: one self-contained `report.html` (charts and images inline)."""

    report_path: Path

    @property
    def fingerprint(self) -> str:
        return file_sha256(self.report_path)

    def run_files(self) -> dict[str, Path]:
        return {"report.html": self.report_path}
