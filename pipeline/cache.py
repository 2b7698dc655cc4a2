"""The stage cache: finished executions' outputs under `cache/<stage>/<fingerprint>/`.

A stage writes into a hidden temporary folder beside its final place; `artifact.json` is written
last and the folder is renamed into place, so a folder under its fingerprint is always finished.
A process killed midway leaves only a `.tmp-<pid>-*` folder, which no lookup reads and the next
execution of that stage removes.

An entry is never changed once committed: run folders link to it, and what a run recorded must stay
as it was. A forced rerun (`--force`) of a fingerprint, or a rerun because its newest entry no longer
holds what it held, commits a new entry beside the earlier ones, `<fingerprint>-2`, `-3`, ...; a
lookup finds the newest that still holds what it held.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import typing
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from components.atomic import locked, new_hidden_dir, remove_abandoned

ARTIFACT_FILE = "artifact.json"


class StageCache:
    """Finished stage outputs of one workdir, by stage and fingerprint."""

    def __init__(self, cache_dir: Path):
        self.cache_dir = cache_dir

    def final_dir(self, stage: str, fingerprint: str) -> Path:
        """The first entry of a fingerprint; also what its lock and its resume folder are named after."""
        return self.cache_dir / stage / fingerprint

    def entries(self, stage: str, fingerprint: str) -> list[Path]:
        """Every committed entry of a fingerprint, oldest first: the first, then later executions' `-2`, `-3`, ..."""
        first = self.final_dir(stage, fingerprint)
        reruns = [path for path in first.parent.glob(f"{fingerprint}-*")
                  if path.name.rpartition("-")[2].isdigit() and path.name.isascii()]
        return [first] + sorted(reruns, key=lambda path: int(path.name.rpartition("-")[2]))

    def lookup(self, stage: str, fingerprint: str) -> Any | None:
        """The artifact of the newest finished execution, or None if none still holds what it held."""
        found = self.find(stage, fingerprint)
        return found[1] if found else None

    def entry_dir(self, stage: str, fingerprint: str) -> Path | None:
        """The folder of the entry `lookup` returns: what a run folder links to."""
        found = self.find(stage, fingerprint)
        return found[0] if found else None

    def find(self, stage: str, fingerprint: str) -> tuple[Path, Any] | None:
        """The newest entry that still holds what it held, as (its folder, its artifact): one check of it."""
        for entry_dir in reversed(self.entries(stage, fingerprint)):
            artifact = read_entry(entry_dir)
            if artifact is not None:
                return entry_dir, artifact
        return None

    @contextmanager
    def claim(self, stage: str, fingerprint: str) -> Iterator[None]:
        """Hold the execution of one fingerprint until the block ends.

        A second process running the same stage on the same inputs waits here, then finds the
        first one's outputs instead of computing them again.
        """
        with locked(self.final_dir(stage, fingerprint)):
            yield

    def new_work_dir(self, stage: str) -> Path:
        """A fresh temporary folder for an execution's outputs; abandoned ones of killed runs are removed."""
        for prefix in ("tmp", "old"):  # `old`: what forced reruns set aside before entries were kept
            remove_abandoned(self.cache_dir / stage, prefix)
        return new_hidden_dir(self.cache_dir / stage, "tmp")

    def commit(self, stage: str, fingerprint: str, work_dir: Path, artifact: Any) -> Any:
        """Move a finished execution into place as the fingerprint's newest entry; returns its artifact with
        paths in that folder.

        The first entry is `<fingerprint>`; a later one (a forced rerun, or a rerun because the newest
        entry no longer holds what it held) is `<fingerprint>-2`, `-3`, ..., and earlier entries stay as
        they are. Called under `claim` of the fingerprint, so no other process commits it meanwhile.
        """
        (work_dir / ARTIFACT_FILE).write_text(json.dumps(
            {**_dump(artifact, work_dir), "fingerprint": artifact.fingerprint}, indent=2))
        existing = [path for path in self.entries(stage, fingerprint) if path.exists()]
        final_dir = self.final_dir(stage, fingerprint)
        if existing:
            number = 1 if existing[-1] == final_dir else int(existing[-1].name.rpartition("-")[2])
            final_dir = final_dir.with_name(f"{fingerprint}-{number + 1}")
        os.rename(work_dir, final_dir)
        return _load(final_dir)

    def discard(self, work_dir: Path) -> None:
        shutil.rmtree(work_dir, ignore_errors=True)


def _dump(artifact: Any, work_dir: Path) -> dict[str, Any]:
    """The artifact as JSON; paths inside `work_dir` become relative so they survive the rename."""
    fields = {}
    for name, value in dataclasses.asdict(artifact).items():
        if isinstance(value, Path) and value.is_relative_to(work_dir):
            value = {"relative": str(value.relative_to(work_dir))}
        elif isinstance(value, Path):
            value = {"absolute": str(value)}
        fields[name] = value
    return {"type": f"{type(artifact).__module__}:{type(artifact).__qualname__}", "fields": fields}


def read_entry(entry_dir: Path) -> Any | None:
    """The artifact of one cache entry (a run folder's stage link points at one), if it still holds what it
    held: its files exist, its content fingerprint is the one it was committed with (an export folder
    removed and its number taken by another model is no hit), and what it describes outside the cache is
    as it was (`still_holds`: a pushed version still in its bucket)."""
    try:
        data = json.loads((entry_dir / ARTIFACT_FILE).read_text())
        artifact = _artifact(entry_dir, data)
        if all(path.exists() for path in _paths(artifact)) and artifact.fingerprint == data["fingerprint"] \
                and artifact.still_holds():
            return artifact
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _load(final_dir: Path) -> Any:
    return _artifact(final_dir, json.loads((final_dir / ARTIFACT_FILE).read_text()))


def _artifact(final_dir: Path, data: dict[str, Any]) -> Any:
    """The artifact described by `artifact.json`'s data, its relative paths made absolute in `final_dir`."""
    module_name, _, class_name = data["type"].partition(":")  # the artifact type, wherever its stage defines it
    if module_name.partition(".")[0] not in ("components", "pipeline"):
        raise ValueError(f"{final_dir}: artifact type {data['type']!r} is not the project's")
    cls = getattr(importlib.import_module(module_name), class_name)
    hints = typing.get_type_hints(cls)
    fields = {}
    for name, value in data["fields"].items():
        if isinstance(value, dict) and "relative" in value:
            value = final_dir / value["relative"]
        elif isinstance(value, dict) and "absolute" in value:
            value = Path(value["absolute"])
        elif isinstance(value, list) and typing.get_origin(hints[name]) is tuple:
            value = tuple(value)
        fields[name] = value
    return cls(**fields)


def _paths(artifact: Any) -> list[Path]:
    return [value for value in dataclasses.asdict(artifact).values() if isinstance(value, Path)]
