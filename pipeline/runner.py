"""The runner: orders the stages, reuses cached executions, records lineage, writes the run folder.

This module holds wiring only. `PIPELINE` below is the whole flow: which config sections, which
earlier stages' artifacts and which outside state each component receives.
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

from components.atomic import write_text_atomically
from components.evaluate import evaluate, find_baseline
from components.export import export
from components.ingest import ingest
from components.preprocess import preprocess
from components.train import train
from components.validate import validate
from pipeline.cache import StageCache
from pipeline.config import PipelineConfig, to_dict
from pipeline.errors import UserError
from pipeline.fingerprint import code_fingerprint, digest, source_state
from pipeline.lineage import Lineage
from pipeline.reproduction import reproduction_record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One step: `fn(*sections, *inputs, **extras, **resolved, out_dir=...)`, cached by fingerprint."""

    name: str
    fn: Callable[..., Any]
    sections: tuple[str, ...]  # config sections passed first, in order
    inputs: tuple[str, ...] = ()  # earlier stages whose artifacts are passed next, in order
    extras: tuple[str, ...] = ()  # run-level values passed by keyword (see `_execute`), not fingerprinted
    watches: Callable[[PipelineConfig], Any] | None = None  # outside state in the fingerprint only
    resolves: Callable[[PipelineConfig, dict, "RunContext"], dict] | None = None  # outside inputs, passed and hashed
    skip_unless: Callable[[dict], str | None] | None = None  # a reason to skip, from earlier artifacts


PIPELINE = (
    Stage("ingest", ingest, ("data",), watches=lambda config: source_state(config.data.source)),
    Stage("validate", validate, ("validate",), ("ingest",)),
    Stage("preprocess", preprocess, ("preprocess",), ("ingest",)),
    Stage("train", train, ("train", "model"), ("ingest", "validate", "preprocess"), ("tensorboard_dir", "resume_dir")),
    Stage("evaluate", evaluate, ("evaluate",), ("train", "ingest"),
          resolves=lambda config, artifacts, context: {"baseline_dir": find_baseline(
              context.saved_models_dir / config.export.model_name, artifacts["train"])}),
    Stage("export", export, ("export",), ("train", "ingest", "validate", "evaluate"), ("saved_models_dir", "run_id"),
          skip_unless=lambda artifacts: None if artifacts["evaluate"].blessed
          else artifacts["evaluate"].blessing_reason),
)
STAGE_NAMES = tuple(stage.name for stage in PIPELINE)


@dataclass(frozen=True)
class Selection:
    """Which stages run: `first..last` (earlier ones must be cached), and which ignore the cache."""

    first: str = STAGE_NAMES[0]
    last: str = STAGE_NAMES[-1]
    force: frozenset[str] = frozenset()

    def position(self, stage: str) -> str:
        """`before`, `inside` or `after` the selected range."""
        index = STAGE_NAMES.index(stage)
        if index < STAGE_NAMES.index(self.first):
            return "before"
        return "after" if index > STAGE_NAMES.index(self.last) else "inside"


class ModelNotBlessed(Exception):
    """The run finished but its model was not blessed and `evaluate.fail_if_not_blessed` is set."""


@dataclass
class RunContext:
    """Where one run writes, and what it has recorded so far."""

    run_id: str
    run_dir: Path
    saved_models_dir: Path
    tensorboard_dir: Path
    cache: StageCache
    lineage: Lineage
    artifacts: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)  # of each stage's output artifact
    stages: list[dict[str, Any]] = field(default_factory=list)


def run_pipeline(config: PipelineConfig, workdir: Path, selection: Selection = Selection(),
                 command: str = "") -> dict[str, Any]:
    """Run the selected stages in order under `workdir` and return the run's manifest.

    Writes `runs/<run_id>/config.json` first and `manifest.json` last (also when a stage fails),
    records the run in `lineage.sqlite`, keeps stage outputs in `cache/` and exports in `saved_models/`.

    Raises:
        UserError: bad input, or a selection whose earlier stages are not cached.
        ModelNotBlessed: after the manifest is written, if the model was not blessed and that must fail.
    """
    context = _new_context(workdir)
    context.run_dir.mkdir(parents=True)
    _write_json(context.run_dir / "config.json", to_dict(config))
    reproduction = reproduction_record(config)
    context.lineage.start_run(context.run_id, command, to_dict(config), reproduction)
    status = "failed"
    try:
        for stage in PIPELINE:
            if selection.position(stage.name) != "after":
                _run_stage(stage, config, context, selection)
        status = "succeeded"
    finally:
        manifest = _manifest(config, context, status, reproduction)
        _write_json(context.run_dir / "manifest.json", manifest)
        context.lineage.end_run(context.run_id, status, manifest["data_fingerprint"],
                                manifest["metrics"]["test_accuracy"], manifest["blessing"]["blessed"],
                                manifest["export"].get("version_dir"))
    if manifest["blessing"]["blessed"] is False and config.evaluate.fail_if_not_blessed:
        raise ModelNotBlessed(manifest["blessing"]["reason"])
    return manifest


def _run_stage(stage: Stage, config: PipelineConfig, context: RunContext, selection: Selection) -> None:
    record: dict[str, Any] = {"name": stage.name, "status": "failed", "seconds": 0.0}
    context.stages.append(record)
    reason = stage.skip_unless(context.artifacts) if stage.skip_unless else None
    if reason:
        record.update(status="skipped", reason=reason)
        log.info("stage %s: skipped (%s)", stage.name, reason)
        return
    resolved = stage.resolves(config, context.artifacts, context) if stage.resolves else {}
    fingerprint = _fingerprint(stage, config, context, resolved)
    record["fingerprint"] = fingerprint
    started = time.time()
    with context.cache.claim(stage.name, fingerprint):
        artifact = None if stage.name in selection.force else context.cache.lookup(stage.name, fingerprint)
        if artifact is None and selection.position(stage.name) == "before":
            raise UserError(f"stage {stage.name} has no cached result for this config; run without "
                            f"--only/--from first, or start earlier (e.g. --from {stage.name})")
        if artifact is None:
            try:
                artifact = _execute(stage, config, context, fingerprint, resolved, record,
                                    stage.name in selection.force)
            except BaseException:
                _record_lineage(stage, context, fingerprint, record, started, produced=False)
                raise
        else:
            record["status"] = "cached"
            log.info("stage %s: cached", stage.name)
    _link(context.run_dir / stage.name, context.cache.final_dir(stage.name, fingerprint))
    context.artifacts[stage.name] = artifact
    # Ingest's artifact carries its data's content hash: what follows is keyed by content, not recipe.
    context.fingerprints[stage.name] = getattr(artifact, "fingerprint", fingerprint)
    _record_lineage(stage, context, fingerprint, record, started)


def _execute(stage: Stage, config: PipelineConfig, context: RunContext, fingerprint: str, resolved: dict,
             record: dict[str, Any], forced: bool) -> Any:
    args = [getattr(config, section) for section in stage.sections]
    args += [context.artifacts[name] for name in stage.inputs]
    extras = {
        "tensorboard_dir": context.tensorboard_dir,
        "saved_models_dir": context.saved_models_dir,
        "run_id": context.run_id,
        # Named by fingerprint, not by run: the next run of a killed command finds it and resumes.
        "resume_dir": context.cache.final_dir(stage.name, fingerprint).with_suffix(".resume"),
    }
    kwargs = {name: extras[name] for name in stage.extras}
    work_dir = context.cache.new_work_dir(stage.name)
    log.info("stage %s: started", stage.name)
    start = time.perf_counter()
    try:
        artifact = stage.fn(*args, **kwargs, **resolved, out_dir=work_dir)
        artifact = context.cache.commit(stage.name, fingerprint, work_dir, artifact, replace=forced)
    except BaseException:
        context.cache.discard(work_dir)
        raise
    finally:
        record["seconds"] = round(time.perf_counter() - start, 3)
    record["status"] = "succeeded"
    return artifact


def _fingerprint(stage: Stage, config: PipelineConfig, context: RunContext, resolved: dict) -> str:
    return digest({
        "stage": stage.name,
        "code": code_fingerprint(stage.fn.__module__),
        "config": {section: dataclasses.asdict(getattr(config, section)) for section in stage.sections},
        "inputs": {name: context.fingerprints[name] for name in stage.inputs},
        "watched": stage.watches(config) if stage.watches else None,
        "resolved": resolved,
    })


def _record_lineage(stage: Stage, context: RunContext, fingerprint: str, record: dict, started: float,
                    produced: bool = True) -> None:
    def described(name: str) -> tuple[str, str, str]:
        return name, str(_artifact_path(context.artifacts[name])), context.fingerprints[name]

    context.lineage.record_execution(
        context.run_id, stage.name, fingerprint, code_fingerprint(stage.fn.__module__), record["status"],
        record["status"] == "cached", started, [described(name) for name in stage.inputs],
        [described(stage.name)] if produced else [])


def _artifact_path(artifact: Any) -> Path:
    """The folder that holds an artifact's files (for an export, its version folder)."""
    first_path = next(v for v in dataclasses.asdict(artifact).values() if isinstance(v, Path))
    return first_path if first_path.is_dir() else first_path.parent


def _new_context(workdir: Path) -> RunContext:
    run_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
    run_dir = workdir / "runs" / run_id
    workdir.mkdir(parents=True, exist_ok=True)
    return RunContext(run_id, run_dir, workdir / "saved_models", run_dir / "tensorboard",
                      StageCache(workdir / "cache"), Lineage(workdir / "lineage.sqlite"))


def _manifest(config: PipelineConfig, context: RunContext, status: str, reproduction: dict) -> dict[str, Any]:
    artifacts = {name: _jsonable(artifact) for name, artifact in context.artifacts.items()}
    metrics = artifacts.get("evaluate", {})
    return {
        "run_id": context.run_id,
        "status": status,
        "run_dir": str(context.run_dir),
        "stages": context.stages,
        "metrics": {"test_accuracy": metrics.get("test_accuracy"), "test_loss": metrics.get("test_loss")},
        "blessing": {"blessed": metrics.get("blessed"), "reason": metrics.get("blessing_reason")},
        "export": artifacts.get("export", {}),
        "data_fingerprint": artifacts.get("ingest", {}).get("fingerprint"),
        "precision": artifacts.get("train", {}).get("precision"),
        "reproduction": reproduction,
        "artifacts": artifacts,
        "config": to_dict(config),
    }


def _jsonable(artifact: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(artifact), default=str))


def _link(link: Path, target: Path) -> None:
    """`runs/<id>/<stage>` -> the cached execution it used."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)


def _write_json(path: Path, data: Any) -> None:
    write_text_atomically(path, json.dumps(data, indent=2, default=str))


def format_summary(manifest: dict[str, Any]) -> str:
    """The table printed at the end of a run: stages with status and seconds, accuracy, exports."""
    lines = [f"run {manifest['run_id']}: {manifest['status']}", f"{'stage':<12}{'status':<12}{'seconds':>9}"]
    lines += [f"{s['name']:<12}{s['status']:<12}{s['seconds']:>9.1f}" for s in manifest["stages"]]
    total = sum(s["seconds"] for s in manifest["stages"])
    lines.append(f"{'total':<24}{total:>9.1f}")
    if "validate" in manifest["artifacts"]:
        lines.append(f"data         {manifest['artifacts']['validate']['summary']}")
    if manifest["metrics"]["test_accuracy"] is not None:
        lines.append(f"test accuracy {manifest['metrics']['test_accuracy']:.4f}  "
                     f"(loss {manifest['metrics']['test_loss']:.4f}, precision {manifest['precision']})")
    if manifest["blessing"]["reason"]:
        lines.append(manifest["blessing"]["reason"])
    if manifest["export"]:
        lines.append(f"SavedModel   {manifest['export']['version_dir']}")
        lines.append(f"ONNX         {manifest['export']['onnx_path']}")
    lines.append(f"run folder   {manifest['run_dir']}")
    return "\n".join(lines)
