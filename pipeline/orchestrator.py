"""The orchestrator: orders the stages, reuses cached executions, records lineage, writes the run folder.

This module holds wiring only: the stages, and what each receives, are listed once in
`pipeline/registry.py`; what a run found out is what each artifact says of itself.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from components.atomic import write_atomically, write_json_atomically
from components.errors import UserError
from components.user_code import find_function
from pipeline.cache import StageCache
from pipeline.config import PipelineConfig, to_dict
from pipeline.fingerprint import code_fingerprint, digest, environment
from pipeline.lineage import Lineage
from pipeline.registry import STAGES, RunPlaces, Stage, flat_settings
from pipeline.reproduction import reproduction_record
from pipeline.selection import Selection

log = logging.getLogger(__name__)


class ModelNotBlessed(Exception):
    """The run finished but its model was not blessed and `evaluate.fail_if_not_blessed` is set."""


@dataclass(frozen=True)
class StageRecord:
    """One stage of a run, as the manifest's `stages` lists it."""

    name: str
    status: str  # succeeded | cached | skipped | failed
    seconds: float = 0.0  # spent computing it in this run (0 when cached or skipped)
    reason: str | None = None  # why it was skipped
    fingerprint: str | None = None  # its cache key (None when skipped)
    inputs: dict[str, str | None] | None = None  # the fingerprint of each input artifact, by stage
    outside: str | None = None  # digest of the outside state it watched and the values resolved for it

    def to_json(self) -> dict[str, Any]:
        """The manifest's entry: the fields that apply to this stage (a skipped one has no fingerprint)."""
        return {name: value for name, value in dataclasses.asdict(self).items() if value is not None}


@dataclass(frozen=True)
class StageKey:
    """What a stage's result depends on (`fingerprint_parts`), its digest, and the values resolved for it."""

    parts: dict[str, Any]
    fingerprint: str
    resolved: dict[str, Any]


@dataclass
class RunContext:
    """Where one run writes, and what it has recorded so far."""

    run_id: str
    run_dir: Path
    saved_models_dir: Path
    tensorboard_dir: Path
    cache: StageCache
    lineage: Lineage
    files: dict[str, Path] = field(default_factory=dict)  # copied to the run folder's top, by name
    command: str = ""
    reproduction: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    stages: list[StageRecord] = field(default_factory=list)


def execute_pipeline(config: PipelineConfig, workdir: Path, selection: Selection = Selection(),
                     command: str = "") -> dict[str, Any]:
    """Run the selected stages in order under `workdir` and return the run's manifest.

    Writes `runs/<run_id>/config.json` first and `manifest.json` last (also when a stage fails, with
    the error), records the run in `lineage.sqlite`, keeps stage outputs in `cache/` and exports in
    `saved_models/`.

    Raises:
        UserError: bad input, or a selection whose earlier stages are not cached.
        ModelNotBlessed: after the manifest is written, if the model was not blessed and that must fail.
    """
    check_stage_functions(selection)
    context = _new_context(workdir, config.export.model_name)
    context.run_dir.mkdir(parents=True)
    write_json_atomically(context.run_dir / "config.json", to_dict(config))
    reproduction = reproduction_record(config)
    context.command, context.reproduction = command, reproduction
    context.lineage.start_run(context.run_id, command, to_dict(config), reproduction)
    status, error = "failed", None
    try:
        for stage in STAGES:
            if selection.position(stage.name) != "after":
                _run_stage(stage, config, context, selection)
        status = "succeeded"
    except BaseException as exception:
        error = _describe_error(exception)
        raise
    finally:
        _link_tensorboard(context)
        manifest = _manifest(config, context, status, error, reproduction)
        write_json_atomically(context.run_dir / "manifest.json", manifest)
        context.lineage.end_run(context.run_id, status, error, manifest["results"])
    if manifest["results"].get("blessed") is False and config.evaluate.fail_if_not_blessed:
        raise ModelNotBlessed(manifest["results"]["blessing_reason"])
    return manifest


def check_stage_functions(selection: Selection) -> None:
    """Find every selected stage's function without importing it, so that a registry entry naming a missing
    module or function stops the run before the first stage, not when its stage starts.

    Raises:
        UserError: one line naming the stage and its entry in `pipeline/registry.py`.
    """
    for stage in STAGES:
        if selection.position(stage.name) != "after":
            try:
                find_function(stage.target, "target")
            except UserError as error:
                raise UserError(f"stage {stage.name} in pipeline/registry.py's STAGES: {error}") from None


def _run_stage(stage: Stage, config: PipelineConfig, context: RunContext, selection: Selection) -> None:
    """Skip, find cached or execute one stage; its record is the last of `context.stages` throughout, so a
    failure anywhere leaves it in the manifest as failed, with what was known by then."""
    context.stages.append(StageRecord(stage.name, "failed"))
    reason = _missing_input(stage, context) or (stage.skip_reason(config, context.artifacts) if stage.skip_reason
                                                else None)
    if reason:
        _update(context, status="skipped", reason=reason)
        log.info("stage %s: skipped (%s)", stage.name, reason)
        return
    key = stage_key(stage, config, context.artifacts, RunPlaces(context.saved_models_dir))
    _update(context, fingerprint=key.fingerprint, inputs=key.parts["inputs"],
            outside=digest([key.parts["watched"], key.parts["resolved"]]))
    started = time.time()
    with context.cache.claim(stage.name, key.fingerprint):
        found = None if stage.name in selection.force else context.cache.find(stage.name, key.fingerprint)
        if found is None and selection.position(stage.name) == "before":
            raise UserError(f"stage {stage.name} has no cached result for this config; run without "
                            f"--only/--from first, or start earlier (e.g. --from {stage.name})")
        if found is None:
            clock = time.perf_counter()  # the stage's own work: not the wait for the claim, not the lookup
            try:
                artifact = _execute(stage, config, context, key)
            except BaseException:
                _update(context, seconds=round(time.perf_counter() - clock, 3))
                _record_lineage(stage, context, key, started, produced=False)
                raise
            _update(context, status="succeeded", seconds=round(time.perf_counter() - clock, 3))
            entry_dir = context.cache.entry_dir(stage.name, key.fingerprint)
        else:
            entry_dir, artifact = found
            _update(context, status="cached")
            log.info("stage %s: cached", stage.name)
        _link(context.run_dir / stage.name, entry_dir)
    context.artifacts[stage.name] = artifact
    _copy_run_files(artifact, context)
    _record_lineage(stage, context, key, started)


def _update(context: RunContext, **changes: Any) -> None:
    """Replace the record of the stage running now (the last one) with these fields changed."""
    context.stages[-1] = dataclasses.replace(context.stages[-1], **changes)


def _execute(stage: Stage, config: PipelineConfig, context: RunContext, key: StageKey) -> Any:
    """Call the stage's function with its arguments by name, in a fresh folder, and commit its outputs.

    An execution of a fingerprint that has entries already (forced, or theirs no longer hold what they
    held) is committed as a new entry beside them, which the run folders that used them keep.
    """
    run_values = {
        "tensorboard_dir": context.tensorboard_dir,
        "saved_models_dir": context.saved_models_dir,
        "run_id": context.run_id,
        "command": context.command,
        "reproduction": context.reproduction,
        "config_values": flat_settings(config.sections),
        "resume_dir": resume_dir(context.cache, stage.name, key.fingerprint),
        "started": time.perf_counter(),
    }
    arguments = stage_arguments(stage, config, context.artifacts, run_values, key.resolved)
    work_dir = context.cache.new_work_dir(stage.name)
    log.info("stage %s: started", stage.name)
    try:
        artifact = load_function(stage)(**arguments, out_dir=work_dir)
        return context.cache.commit(stage.name, key.fingerprint, work_dir, artifact)
    except BaseException:
        context.cache.discard(work_dir)
        raise


def stage_arguments(stage: Stage, config: PipelineConfig, artifacts: dict[str, Any], run_values: dict[str, Any],
                    resolved: dict[str, Any]) -> dict[str, Any]:
    """What the stage's function receives, by parameter name (all but `out_dir`)."""
    return {
        **{parameter: config.sections[section.name] for parameter, section in stage.config.items()},
        **{parameter: artifacts.get(name) for parameter, name in stage.inputs.items()},
        **{name: run_values[name] for name in stage.run_values},
        **resolved,
    }


def resume_dir(cache: StageCache, stage: str, fingerprint: str) -> Path:
    """Where a stage keeps what lets it resume: named by fingerprint, not by run, so the next run of a
    killed command (and every worker of a multi-worker one) finds it."""
    return cache.final_dir(stage, fingerprint).with_suffix(".resume")


def load_function(stage: Stage) -> Callable[..., Any]:
    """The stage's function, imported from its `module:function` name."""
    module_name, _, function_name = stage.target.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def stage_key(stage: Stage, config: PipelineConfig, artifacts: dict[str, Any], places: RunPlaces) -> StageKey:
    """Resolve a stage's outside values and compute its cache key, from the artifacts of the stages before it."""
    resolved = stage.resolves(config, artifacts, places) if stage.resolves else {}
    parts = fingerprint_parts(stage, config, artifacts, resolved)
    return StageKey(parts, digest(parts), resolved)


def fingerprint_parts(stage: Stage, config: PipelineConfig, artifacts: dict[str, Any], resolved: dict) -> dict:
    """What a stage's result depends on: its code, config sections, inputs' content, outside state."""
    return {
        "stage": stage.name,
        "code": code_fingerprint(stage.target.partition(":")[0]),
        "environment": environment(),
        "config": {section.name: {key: value for key, value in dataclasses.asdict(config.sections[section.name]).items()
                                  if f"{section.name}.{key}" not in stage.unkeyed}
                   for section in stage.config.values()},
        "inputs": {name: artifacts[name].fingerprint if name in artifacts else None
                   for name in stage.inputs.values()},
        "watched": stage.watches(config) if stage.watches else None,
        "resolved": {name: _hashable(value) for name, value in resolved.items()},
    }


def _hashable(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _record_lineage(stage: Stage, context: RunContext, key: StageKey, started: float, produced: bool = True) -> None:
    def described(name: str) -> tuple[str, str, str]:
        return name, str(_artifact_path(context.artifacts[name])), context.artifacts[name].fingerprint

    record = context.stages[-1]
    context.lineage.record_execution(
        context.run_id, stage.name, record.fingerprint, key.parts["code"],
        record.status, record.status == "cached", started,
        [described(name) for name in stage.inputs.values() if name in context.artifacts],
        [described(stage.name)] if produced else [])


def _artifact_path(artifact: Any) -> Path:
    """The folder that holds an artifact's files (for an export, its version folder)."""
    first_path = next(v for v in dataclasses.asdict(artifact).values() if isinstance(v, Path))
    return first_path if first_path.is_dir() else first_path.parent


def _missing_input(stage: Stage, context: RunContext) -> str | None:
    """Why a stage cannot run: an input it cannot do without comes from a stage that was skipped."""
    missing = [name for parameter, name in stage.inputs.items()
               if name not in context.artifacts and parameter not in stage.optional]
    return f"needs {missing[0]}, which did not run" if missing else None


def _copy_run_files(artifact: Any, context: RunContext) -> None:
    """Copy the files an artifact names (e.g. report.html) to the top of the run folder."""
    for name, path in artifact.run_files().items():
        target = context.run_dir / name
        write_atomically(target, lambda tmp_path, source=path: shutil.copyfile(source, tmp_path))
        context.files[name] = target


def _new_context(workdir: Path, model_name: str) -> RunContext:
    """A fresh run id and the places of its run; TensorBoard's runs are named `<model_name>/<run_id>`."""
    run_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
    workdir = workdir.resolve()  # lineage records absolute paths: `runs show` finds them from anywhere
    run_dir = workdir / "runs" / run_id
    workdir.mkdir(parents=True, exist_ok=True)
    return RunContext(run_id, run_dir, workdir / "saved_models", workdir / "tensorboard" / model_name / run_id,
                      StageCache(workdir / "cache"), Lineage(workdir / "lineage.sqlite"))


def _link_tensorboard(context: RunContext) -> None:
    """`runs/<id>/tensorboard` -> what the run wrote for TensorBoard, if it wrote anything."""
    if context.tensorboard_dir.is_dir() and context.run_dir.is_dir():
        _link(context.run_dir / "tensorboard", context.tensorboard_dir)


def _describe_error(exception: BaseException) -> str:
    """One line for the manifest and the lineage: a user's mistake as said, anything else with its type."""
    if isinstance(exception, UserError):
        return str(exception)
    if isinstance(exception, KeyboardInterrupt):
        return str(exception) or "interrupted"
    text = str(exception).strip().splitlines()
    return f"{type(exception).__name__}: {text[0]}" if text else type(exception).__name__


def _manifest(config: PipelineConfig, context: RunContext, status: str, error: str | None,
              reproduction: dict) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for artifact in context.artifacts.values():
        results.update(artifact.facts())
    return {
        "run_id": context.run_id,
        "status": status,
        "error": error,
        "run_dir": str(context.run_dir),
        "stages": [record.to_json() for record in context.stages],
        "results": results,
        "summary": [line for artifact in context.artifacts.values() for line in artifact.summary()],
        "files": {name: str(path) for name, path in context.files.items()},
        "reproduction": reproduction,
        "artifacts": {name: _jsonable(artifact) for name, artifact in context.artifacts.items()},
        "config": to_dict(config),
    }


def _jsonable(artifact: Any) -> dict[str, Any]:
    return {**json.loads(json.dumps(dataclasses.asdict(artifact), default=str)), "fingerprint": artifact.fingerprint}


def _link(link: Path, target: Path) -> None:
    """`runs/<id>/<stage>` -> the cached execution it used."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)


def format_summary(manifest: dict[str, Any]) -> str:
    """The table printed at the end of a run: stages with status and seconds, then each artifact's lines."""
    lines = [f"run {manifest['run_id']}: {manifest['status']}", f"{'stage':<12}{'status':<12}{'seconds':>9}"]
    lines += [f"{s['name']:<12}{s['status']:<12}{s['seconds']:>9.1f}" for s in manifest["stages"]]
    total = sum(s["seconds"] for s in manifest["stages"])
    lines.append(f"{'total':<24}{total:>9.1f}")
    lines += manifest["summary"]
    lines += [f"{name:<13}{path}" for name, path in manifest.get("files", {}).items()]
    lines.append(f"run folder   {manifest['run_dir']}")
    return "\n".join(lines)
