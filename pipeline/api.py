"""The Python API: `from pipeline import run, load_model`.

`run` goes through the command line's own code (`pipeline.config.resolve`, `pipeline.selection.select_stages`,
`pipeline.workers.execute_share`), so a run from Python is checked, cached and recorded exactly as
`python -m pipeline.run` would do it; `load_model` is `components.loaded_model.load_exported`, the code
`python -m pipeline.predict` classifies with.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from components.errors import UserError
from components.loaded_model import load_exported
from pipeline.config import resolve
from pipeline.quiet import quiet_tensorflow
from pipeline.registry import STAGE_NAMES
from pipeline.selection import select_stages
from pipeline.workdir import check_workdir, create_workdir

# an exported version (a model folder means its newest), local or in a bucket (s3://..., fetched into the
# cache once), ready to predict
load_model = load_exported


def run(preset: str = "default", overrides: Mapping[str, Any] | Sequence[str] = (), workdir: Path | str = ".", *,
        config_files: Sequence[Path | str] = (), force: bool | str = False, only: str | None = None,
        start: str | None = None, until: str | None = None, verbose: bool = False) -> dict[str, Any]:
    """Run the pipeline as `python -m pipeline.run` does, and return the run's manifest.

    Args:
        preset: `default`, `smoke` or `fashion` (`--preset`).
        overrides: `{"train.epochs": 3, "model.conv_widths": (8, 16)}` (Python values), or the command
            line's `["train.epochs=3", "model.conv_widths=(8, 16)"]`; typed and checked as there.
        workdir: holds `runs/`, `cache/`, `lineage.sqlite` and `saved_models/` (`--workdir`); created if missing.
        config_files: TOML files, or runs' `config.json`, applied in order after the preset and before
            `overrides` (`--config FILE ...`).
        force: True reruns every stage ignoring the cache, a stage's name just that one (`--force [STAGE]`).
        only: run just this stage; earlier ones must be cached (`--only`).
        start: rerun this stage and every later one (`--from`).
        until: stop after this stage (`--until`).
        verbose: show TensorFlow's start-up logs and library warnings (`--verbose`). By default they are
            kept out of sight as on the command line, for this whole process: the `tensorflow` logger set
            to errors, FutureWarning and DeprecationWarning ignored, TensorFlow's C++ lines while it
            loads sent to /dev/null.

    Returns:
        The manifest, as written to `runs/<run_id>/manifest.json`: status, stages, `results` (test
        accuracy, blessing, `version_dir` of the export, ...), `files` (`report.html`) and `artifacts`.

    Raises:
        UserError: a mistake in the arguments, with the command line's message; nothing is run then.
        pipeline.orchestrator.ModelNotBlessed: the model was not blessed and `evaluate.fail_if_not_blessed` is set.
    """
    texts = override_texts(overrides)
    config = resolve(preset, texts, config_files)
    if only and start:
        raise UserError(f"only={only!r} runs one stage and start={start!r} a range; give one of them")
    stages = select_stages(_force_argument(force), _stage(only, "only"), _stage(start, "start"),
                           _stage(until, "until"))
    workdir = Path(workdir)
    check_workdir(workdir, "workdir")
    create_workdir(workdir, "workdir")
    quiet_tensorflow(verbose)
    from pipeline.workers import execute_share  # the stages' bookkeeping; TensorFlow loads only if a stage computes

    command = _equivalent_command(preset, texts, config_files, workdir, force, only, start, until, verbose)
    return execute_share(config, workdir, stages, command)


def override_texts(overrides: Mapping[str, Any] | Sequence[str]) -> list[str]:
    """Overrides as the command line's `section.key=value` texts, which `resolve` types by their field.

    A Python value becomes the literal the command line would take (`(8, 16)`, `0.001`, `True`), so
    a typed override and its command-line text resolve to the same config, with the same errors. A
    string stays as it is: a text field takes it verbatim and other fields read it as a literal, as
    on the command line.
    """
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, Mapping):
        return [f"{key}={_as_literal(value)}" for key, value in overrides.items()]
    return [str(text) for text in overrides]


def _as_literal(value: Any) -> str:
    """The command-line text of a Python value: a string as it is, anything else as a Python literal."""
    return value if isinstance(value, str) else repr(_plain(value))


def _plain(value: Any) -> Any:
    """NumPy scalars and arrays as Python numbers and tuples, lists as tuples: values `repr` writes as literals."""
    if isinstance(value, (np.generic, np.ndarray)):
        value = value.tolist()
    if isinstance(value, (tuple, list)):
        return tuple(_plain(item) for item in value)
    return value


def _force_argument(force: bool | str | None) -> str | None:
    """`--force`'s value: `all`, one stage's name, or None."""
    if force is True:
        return "all"
    if not force:
        return None
    return force if force == "all" else _stage(force, "force")


def _stage(name: str | None, argument: str) -> str | None:
    if name is not None and name not in STAGE_NAMES:
        raise UserError(f"{argument}={name!r} is not a stage; the stages are {', '.join(STAGE_NAMES)}")
    return name


def _equivalent_command(preset: str, texts: Sequence[str], config_files: Sequence[Path | str], workdir: Path,
                        force: bool | str, only: str | None, start: str | None, until: str | None,
                        verbose: bool) -> str:
    """The `python -m pipeline.run` command that does what this call does: the run's "Reproduce" line."""
    arguments = ["--preset", preset, "--workdir", str(workdir)]
    for path in config_files:
        arguments += ["--config", str(path)]
    arguments += ["--force"] if force is True else ["--force", force] if force else []
    for option, value in (("--only", only), ("--from", start), ("--until", until)):
        arguments += [option, value] if value else []
    arguments += ["--verbose"] if verbose else []
    return "python -m pipeline.run " + shlex.join([*arguments, *texts])
