"""Queries on the exported models in `saved_models/<name>/<version>/` (TF Serving's layout): which versions
exist, what each one is (`metadata.json`), which one a new model is compared with, and which one it starts from.

It loads no TensorFlow: the consumers of an export (predict, serve) use it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.errors import UserError
from components.hashing import file_sha256

METADATA_FILE = "metadata.json"  # in every exported version folder: run, data, metrics, input and classes


def version_dirs(model_dir: Path) -> list[Path]:
    """The exported version folders of one model (TF Serving layout), oldest number first.

    Only folders with a `metadata.json` count: a numbered folder someone made by hand is no export.
    """
    return [path for path in numbered_entries(model_dir) if (path / METADATA_FILE).is_file()]


def numbered_entries(model_dir: Path) -> list[Path]:
    """Everything under `model_dir` whose name is a version number, oldest first."""
    entries = [path for path in model_dir.iterdir() if path.name.isascii() and path.name.isdigit()] \
        if model_dir.is_dir() else []  # isascii: "²".isdigit() is True, but it is no number
    return sorted(entries, key=lambda path: int(path.name))


def read_metadata(version_dir: Path) -> dict[str, Any]:
    """An exported version's `metadata.json`."""
    return json.loads((version_dir / METADATA_FILE).read_text())


@dataclass(frozen=True)
class ModelKind:
    """What a model takes and predicts. Two versions of one model name must be of one kind: a server that
    follows the newest version would otherwise switch, silently, to another kind of model."""

    image_shape: tuple[int, ...]  # height, width, channels
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:  # lists compare unequal to tuples: a kind is the same whatever held it
        object.__setattr__(self, "image_shape", tuple(self.image_shape))
        object.__setattr__(self, "class_names", tuple(self.class_names))

    def describe(self) -> str:
        """`28x28x1 images of 10 classes (0, 1, 2, 3, 4, ...)`."""
        names = ", ".join(self.class_names[:5]) + (", ..." if len(self.class_names) > 5 else "")
        return f"{'x'.join(map(str, self.image_shape))} images of {len(self.class_names)} classes ({names})"


def kind_of(version_dir: Path) -> ModelKind:
    """What an exported version takes and predicts, from its `metadata.json`."""
    metadata = read_metadata(version_dir)
    return ModelKind(tuple(metadata["input"]["shape"][1:]), tuple(metadata["class_names"]))


@dataclass(frozen=True)
class Baseline:
    """An exported version to compare a new model with, named by its content: a path can be reused."""

    version_dir: Path
    weights_sha256: str


def find_baseline(model_dir: Path, weights_sha256: str) -> Baseline | None:
    """The newest exported version under `model_dir` that holds another model than this one, if any.

    Versions holding this very model are passed over: once a run has exported its model, running the
    same command again compares it with what it was compared with the first time (and so finds
    evaluate cached), not with itself.
    """
    for version_dir in reversed(version_dirs(model_dir)):
        weights = read_metadata(version_dir).get("weights_sha256", "")
        if weights != weights_sha256:
            return Baseline(version_dir, weights)
    return None


WARM_START_FILES = ("network.json", "model.weights.h5")  # in every export since warm starts: what training resumes


@dataclass(frozen=True)
class Parent:
    """The exported version a run warm-starts from (`model.init`), named by its content."""

    label: str  # NAME/VERSION, e.g. "mnist/3": how the manifest, lineage and model card name it
    version_dir: Path
    weights_sha256: str  # of its network.json and model.weights.h5: a new version folder retrains


def find_parent(init: str) -> Parent:
    """The version `model.init` names, with the hash of what a warm start reads from it (train's fingerprint)."""
    version_dir = parent_version_dir(init)
    return Parent(f"{version_dir.parent.name}/{version_dir.name}", version_dir,
                  file_sha256(*(version_dir / name for name in WARM_START_FILES)))


def parent_version_dir(init: str) -> Path:
    """The version folder `model.init` names: itself, or a model folder's newest version; its files not read.

    Raises:
        UserError: no such folder, no exported version in it, or a version exported before warm starts.
    """
    path = Path(init).expanduser()
    how = "give saved_models/NAME (its newest version) or saved_models/NAME/VERSION"
    if not path.is_dir():
        raise UserError(f"model.init={init}: no such folder; {how}")
    versions = [path] if (path / METADATA_FILE).is_file() else version_dirs(path)
    if not versions:
        raise UserError(f"model.init={init} holds no exported version; {how}")
    version_dir = versions[-1].resolve()
    missing = [name for name in WARM_START_FILES if not (version_dir / name).is_file()]
    if missing:
        raise UserError(f"model.init={init}: {version_dir} has no {' or '.join(missing)} (exported before warm "
                        "starts were possible); export that model again with this version of the pipeline")
    return version_dir
