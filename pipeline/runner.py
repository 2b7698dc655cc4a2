"""The runner: orders the stages, gives each its run folder, and writes the manifest and summary.

This module holds wiring only. `PIPELINE` below is the whole flow: which config sections and
which earlier stages' artifacts each component receives.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from components.evaluate import evaluate
from components.export import export
from components.ingest import ingest
from components.preprocess import preprocess
from components.train import train
from components.validate import validate
from pipeline.config import PipelineConfig, to_dict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: `fn(*sections, *inputs, **extras, out_dir=runs/<id>/<name>)`."""

    name: str
    fn: Callable[..., Any]
    sections: tuple[str, ...]  # config sections passed first, in order
    inputs: tuple[str, ...] = ()  # earlier stages whose artifacts are passed next, in order
    extras: tuple[str, ...] = ()  # run-level values passed by keyword (see RunContext)


PIPELINE = (
    Stage("ingest", ingest, ("data",)),
    Stage("validate", validate, ("validate",), ("ingest",)),
    Stage("preprocess", preprocess, ("preprocess",), ("ingest",)),
    Stage("train", train, ("train", "model"), ("ingest", "validate", "preprocess"), ("tensorboard_dir",)),
    Stage("evaluate", evaluate, ("evaluate",), ("train", "ingest")),
    Stage("export", export, ("export",), ("train", "ingest", "validate", "evaluate"),
          ("saved_models_dir", "run_id")),
)


@dataclass
class RunContext:
    """Where one run writes, and what it has recorded so far."""

    run_id: str
    run_dir: Path
    saved_models_dir: Path
    tensorboard_dir: Path
    artifacts: dict[str, Any] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)


def run_pipeline(config: PipelineConfig, workdir: Path) -> dict[str, Any]:
    """Run every stage in order under `workdir` and return the run's manifest.

    Writes `runs/<run_id>/config.json` first and `runs/<run_id>/manifest.json` last (also when a
    stage fails, with that stage's status `failed`); exports go to `workdir/saved_models/`.
    """
    context = _new_context(workdir)
    context.run_dir.mkdir(parents=True)
    _write_json(context.run_dir / "config.json", to_dict(config))
    status = "failed"
    try:
        for stage in PIPELINE:
            _run_stage(stage, config, context)
        status = "succeeded"
    finally:
        manifest = _manifest(config, context, status)
        _write_json(context.run_dir / "manifest.json", manifest)
    return manifest


def _run_stage(stage: Stage, config: PipelineConfig, context: RunContext) -> None:
    args = [getattr(config, section) for section in stage.sections]
    args += [context.artifacts[name] for name in stage.inputs]
    kwargs = {name: getattr(context, name) for name in stage.extras}
    record = {"name": stage.name, "status": "failed", "seconds": 0.0}
    context.stages.append(record)
    log.info("stage %s: started", stage.name)
    start = time.perf_counter()
    try:
        context.artifacts[stage.name] = stage.fn(*args, **kwargs, out_dir=context.run_dir / stage.name)
        record["status"] = "succeeded"
    finally:
        record["seconds"] = round(time.perf_counter() - start, 3)


def _new_context(workdir: Path) -> RunContext:
    run_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
    run_dir = workdir / "runs" / run_id
    return RunContext(run_id, run_dir, workdir / "saved_models", run_dir / "tensorboard")


def _manifest(config: PipelineConfig, context: RunContext, status: str) -> dict[str, Any]:
    artifacts = {name: _jsonable(artifact) for name, artifact in context.artifacts.items()}
    metrics = artifacts.get("evaluate", {})
    return {
        "run_id": context.run_id,
        "status": status,
        "run_dir": str(context.run_dir),
        "stages": context.stages,
        "metrics": {"test_accuracy": metrics.get("test_accuracy"), "test_loss": metrics.get("test_loss")},
        "export": artifacts.get("export", {}),
        "data_fingerprint": artifacts.get("ingest", {}).get("fingerprint"),
        "precision": artifacts.get("train", {}).get("precision"),
        "artifacts": artifacts,
        "config": to_dict(config),
    }


def _jsonable(artifact: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(artifact), default=str))


def _write_json(path: Path, data: Any) -> None:
    """Write JSON via a temporary file and a rename, so readers never see half a file."""
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp_path.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp_path, path)


def format_summary(manifest: dict[str, Any]) -> str:
    """The table printed at the end of a run: stages with status and seconds, accuracy, exports."""
    lines = [f"run {manifest['run_id']}: {manifest['status']}", f"{'stage':<12}{'status':<12}{'seconds':>9}"]
    lines += [f"{s['name']:<12}{s['status']:<12}{s['seconds']:>9.1f}" for s in manifest["stages"]]
    total = sum(s["seconds"] for s in manifest["stages"])
    lines.append(f"{'total':<24}{total:>9.1f}")
    if manifest["metrics"]["test_accuracy"] is not None:
        lines.append(f"test accuracy {manifest['metrics']['test_accuracy']:.4f}  "
                     f"(loss {manifest['metrics']['test_loss']:.4f}, precision {manifest['precision']})")
    if manifest["export"]:
        lines.append(f"SavedModel   {manifest['export']['version_dir']}")
        lines.append(f"ONNX         {manifest['export']['onnx_path']}")
    lines.append(f"run folder   {manifest['run_dir']}")
    return "\n".join(lines)
