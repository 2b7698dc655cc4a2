"""The stage registry: the one list of stages, read by the CLI, the orchestrator and the tests.

It imports no TensorFlow (a stage's function is named as `module:function` and imported only when the
stage runs), so the CLI can check a command and print `--help` in a fraction of a second.

A stage's function receives everything by parameter name: its config sections (`config`), earlier
stages' artifacts (`inputs`), values of the run (`run_values`), outside values the orchestrator resolves
for it (`resolves`), and `out_dir`. Adding a stage is one module in `components/`, one entry below
and, if it has settings, one section in `components/config.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from components.backbones import BACKBONES, WEIGHTS_SUFFIX
from components.config import (
    BUILT_IN_BUILDERS,
    DataConfig,
    EvaluateConfig,
    ExportConfig,
    ModelConfig,
    PreprocessConfig,
    ReportConfig,
    Section,
    TrainConfig,
    TuneConfig,
    ValidateConfig,
)
from components.hashing import file_sha256
from components.saved_models import Parent, find_baseline, find_parent
from components.source_defaults import augmentation_for, model_name_from_source
from components.train_plan import plan_training
from components.user_code import find_function
from pipeline.fingerprint import source_state

# Templates are no Python, so the code fingerprint misses them: the stages that render one watch it.
TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "components" / "templates"

# What the orchestrator offers a stage besides config and artifacts, by parameter name.
# `started` is time.perf_counter() when the stage started, before its function was imported: a stage with a
# time budget counts its start-up too.
RUN_VALUES = ("tensorboard_dir", "resume_dir", "saved_models_dir", "run_id", "command", "reproduction",
              "config_values", "started")


@dataclass(frozen=True)
class RunPlaces:
    """Where a run reads and writes outside its stage folders: what `resolves` hooks may look at."""

    saved_models_dir: Path


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline, bound to its function by parameter name and cached by fingerprint."""

    name: str
    target: str  # "module:function", the function that computes the stage; imported when the stage runs
    config: Mapping[str, type[Section]]  # parameter name -> config section it receives
    inputs: Mapping[str, str] = field(default_factory=dict)  # parameter name -> earlier stage's artifact
    run_values: tuple[str, ...] = ()  # parameters filled by the orchestrator, from RUN_VALUES; not fingerprinted
    # Outside state the stage depends on: `watches(config)` is only fingerprinted; `resolves(config,
    # artifacts, places)` returns values that are fingerprinted and passed by name.
    watches: Callable[[Any], Any] | None = None
    resolves: Callable[[Any, Mapping[str, Any], RunPlaces], dict[str, Any]] | None = None
    # Why the stage does not run this time, from the config and earlier artifacts; None = it runs.
    skip_reason: Callable[[Any, Mapping[str, Any]], str | None] | None = None
    # Input parameters that receive None when their stage was skipped; any other missing input skips this one.
    optional: tuple[str, ...] = ()
    # Keys (`section.key`) of its config sections that cannot change its result, left out of its cache key: a
    # later stage reads them (export does not push, so a new `export.push_to` reruns push, not export).
    unkeyed: tuple[str, ...] = ()


STAGES: tuple[Stage, ...] = (
    Stage("ingest", "components.ingest:ingest", {"config": DataConfig},
          watches=lambda config: source_state(config.data.source),
          resolves=lambda config, artifacts, places: smallest_image(config.model)),
    Stage("validate", "components.validate:validate", {"config": ValidateConfig}, {"splits": "ingest"}),
    Stage("preprocess", "components.preprocess:preprocess", {"config": PreprocessConfig}, {"splits": "ingest"}),
    Stage("tune", "components.tune:tune",
          {"config": TuneConfig, "train_config": TrainConfig, "model_config": ModelConfig},
          {"splits": "ingest", "schema": "validate", "normalization": "preprocess"},
          run_values=("tensorboard_dir", "resume_dir", "started"), watches=lambda config: network_sources(config.model),
          resolves=lambda config, artifacts, places: {"plan": plan_training(config.train)},
          skip_reason=lambda config, artifacts: None if config.tune.max_seconds else "tune.max_seconds=0"),
    Stage("train", "components.train:train", {"config": TrainConfig, "model_config": ModelConfig},
          {"splits": "ingest", "schema": "validate", "normalization": "preprocess", "tuning": "tune"},
          run_values=("tensorboard_dir", "resume_dir"), optional=("tuning",),
          watches=lambda config: network_sources(config.model),
          resolves=lambda config, artifacts, places: {"plan": plan_training(config.train), **warm_start(config.model)}),
    Stage("evaluate", "components.evaluate:evaluate", {"config": EvaluateConfig},
          {"trained": "train", "splits": "ingest"},
          resolves=lambda config, artifacts, places: {"baseline": find_baseline(
              places.saved_models_dir / config.export.model_name, artifacts["train"].weights_sha256)}),
    Stage("export", "components.export:export", {"config": ExportConfig},
          {"trained": "train", "splits": "ingest", "schema": "validate", "metrics": "evaluate"},
          run_values=("saved_models_dir", "run_id", "command", "reproduction"),
          watches=lambda config: file_sha256(TEMPLATES_DIR / "model_card.md.j2"),
          skip_reason=lambda config, artifacts: None if artifacts["evaluate"].blessed
          else artifacts["evaluate"].blessing_reason, unkeyed=("export.push_to",)),
    Stage("push", "components.push:push", {"config": ExportConfig}, {"exported": "export"},
          skip_reason=lambda config, artifacts: None if config.export.push_to else "export.push_to is not set"),
    Stage("report", "components.report:report", {"config": ReportConfig},
          {"splits": "ingest", "schema": "validate", "tuning": "tune", "trained": "train", "metrics": "evaluate",
           "exported": "export"},
          run_values=("tensorboard_dir", "run_id", "command", "reproduction", "config_values"),
          optional=("tuning", "exported"), watches=lambda config: file_sha256(TEMPLATES_DIR / "report.html.j2"),
          resolves=lambda config, artifacts, places: report_settings(config)),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)


def builder_source(builder: str) -> str | None:
    """sha256 of the file holding a user's network (`model.builder=MODULE:FUNCTION`), so editing it retrains.

    The built-in CNN is project code, which every stage's code fingerprint covers already.
    """
    return None if builder in BUILT_IN_BUILDERS else file_sha256(find_function(builder, "model.builder"))


def network_sources(model: ModelConfig) -> str | list[str | None] | None:
    """What a network's starting point is made of outside the project: the builder's file, and a weights file."""
    if model.weights.endswith(WEIGHTS_SUFFIX):
        return [builder_source(model.builder), file_sha256(Path(model.weights).expanduser())]
    return builder_source(model.builder)


def smallest_image(model: ModelConfig) -> dict[str, int]:
    """ingest's `min_image_size`: a backbone's smallest input (the built-in CNN and users' networks take any)."""
    return {"min_image_size": BACKBONES[model.builder].min_size} if model.builder in BACKBONES else {}


def warm_start(model: ModelConfig) -> dict[str, Parent]:
    """train's `parent`, the export `model.init` names, resolved now: a model folder's newest version changes."""
    return {"parent": find_parent(model.init)} if model.init else {}


def sections() -> dict[str, type[Section]]:
    """Every config section the stages read, by name, in pipeline order."""
    found: dict[str, type[Section]] = {}
    for stage in STAGES:
        for section in stage.config.values():
            found.setdefault(section.name, section)
    return found


def flat_settings(config_sections: Mapping[str, Section]) -> dict[str, Any]:
    """Every `section.key` and its value."""
    return {f"{name}.{key}": value for name, section in config_sections.items()
            for key, value in dataclasses.asdict(section).items()}


def changed_settings(config_sections: Mapping[str, Section]) -> dict[str, Any]:
    """The `section.key` values a person changed: those that differ from the defaults for the same data.

    Some defaults are derived from the data source (the model's name, the augmentation); a value equal
    to what its default means for this run's `data.source` was not changed, whatever the field's raw default.
    """
    source = config_sections["data"].source
    defaults = {**flat_settings({name: section() for name, section in sections().items()}),
                **derived_defaults(source)}
    return {key: value for key, value in flat_settings(config_sections).items() if defaults.get(key) != value}


def derived_defaults(source: str) -> dict[str, Any]:
    """What `export.model_name=""` and `train.augment=auto` stand for with this data source."""
    return {"export.model_name": model_name_from_source(source), "train.augment": augmentation_for(source)}


def report_settings(config: Any) -> dict[str, Any]:
    """What report.html shows of the config, and so what its cache key covers: the settings changed, and the
    model's name. Every value goes to TensorBoard's HParams as the run value `config_values`, unkeyed: a
    setting added with its default (a new stage's, say) leaves earlier reports cached."""
    return {"changed_settings": changed_settings(config.sections), "model_name": config.export.model_name}


def stage(name: str) -> Stage:
    """The registered stage called `name`."""
    return next(entry for entry in STAGES if entry.name == name)
