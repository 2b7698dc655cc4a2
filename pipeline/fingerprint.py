"""Fingerprints that decide when a stage's cached outputs can be reused.

A stage execution's fingerprint covers its code (the stage's module and every project module it
imports, directly or not), its config sections, the fingerprints of its input artifacts and any
outside state it reads (source files, the baseline model). Code is hashed as its syntax tree, so
a comment or formatting change does not invalidate the cache, while any change to what runs does.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import stat
from functools import lru_cache
from pathlib import Path

from components.hashing import json_sha256
from components.remote import is_url, list_objects

PROJECT_PACKAGES = ("components", "pipeline")
# What these modules mean to a stage is its config section (hashed as data) or an exception class;
# hashing their code would rerun every stage whenever a default's meaning or a check is edited.
NOT_CODE_INPUTS = ("components.config", "components.errors")
# The libraries whose versions can change what a stage computes.
PACKAGES = ("tensorflow", "keras", "numpy", "scikit-learn", "tensorflow-datasets", "tf2onnx", "onnx", "onnxruntime",
            "ai-edge-litert", "pillow", "optuna")


digest = json_sha256  # sha256 of data as canonical JSON: one definition, shared with the artifacts


@lru_cache(maxsize=None)
def environment() -> dict[str, str | None]:
    """The installed versions of the libraries a stage's result depends on (part of every fingerprint)."""
    return {name: package_version(name) for name in PACKAGES}


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def source_state(source: str) -> list[tuple[str, int, int, int, int]] | list[tuple[str, int, str]] | None:
    """Every file and folder a `kind:PATH` source reads, with size, inode and times (None for others).

    Cheap enough to compute on every run (DVC-style). The change time is part of it: no tool can set
    it back, so a file rewritten in place and given its old modification time (`touch -r`, `cp -p`,
    `rsync -a`) still shows. Symbolic links to folders are followed, as the readers follow them.
    In a bucket, every object with its size and identity (ETag, generation): one listing, no download.

    Raises:
        UserError: the bucket or object is missing, access is denied, or the store cannot be reached.
    """
    argument = source.partition(":")[2]
    if is_url(argument):
        return [(item.name, item.size, item.identity) for item in list_objects(argument)]
    path = Path(argument)
    if not argument or not path.exists():
        return None
    if path.is_file():
        return [(path.name, *_identity(path))]
    entries, seen = [], set()
    for folder, folder_names, file_names in os.walk(path, followlinks=True):
        if os.path.realpath(folder) in seen:  # a link back up the tree: read once
            folder_names.clear()
            continue
        seen.add(os.path.realpath(folder))
        for name in sorted(folder_names) + sorted(file_names):
            entry = Path(folder) / name
            entries.append((str(entry.relative_to(path)), *_identity(entry)))
    return entries


def _identity(path: Path) -> tuple[int, int, int, int]:
    status = os.stat(path)  # follows links: what is read, not the link
    size = 0 if stat.S_ISDIR(status.st_mode) else status.st_size
    return size, status.st_ino, status.st_mtime_ns, status.st_ctime_ns


def code_fingerprint(module_name: str) -> str:
    """sha256 over the syntax trees of `module_name` and the project modules it imports, transitively."""
    return digest({name: _module_tree(name) for name in sorted(project_imports(module_name))})


def project_imports(module_name: str) -> set[str]:
    """`module_name` and every project module reachable from it through import statements."""
    seen: set[str] = set()
    pending = [module_name]
    while pending:
        name = pending.pop()
        if name not in seen:
            seen.add(name)
            pending.extend(_direct_project_imports(name))
    return seen


@lru_cache(maxsize=None)
def _module_tree(module_name: str) -> str:
    tree = ast.parse(_source(module_name))
    for node in ast.walk(tree):  # docstrings are comments too: drop them
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


@lru_cache(maxsize=None)
def _direct_project_imports(module_name: str) -> tuple[str, ...]:
    names = []
    for node in ast.walk(ast.parse(_source(module_name))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            if _is_package(node.module):  # `from components import model` names a module too
                names += [f"{node.module}.{alias.name}" for alias in node.names]
    return tuple(name for name in names
                 if name.split(".")[0] in PROJECT_PACKAGES and name not in NOT_CODE_INPUTS and _is_module(name))


def _is_module(name: str) -> bool:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None and spec.origin.endswith(".py")


def _is_package(name: str) -> bool:
    spec = importlib.util.find_spec(name) if name.split(".")[0] in PROJECT_PACKAGES else None
    return spec is not None and spec.submodule_search_locations is not None


def _source(module_name: str) -> str:
    spec = importlib.util.find_spec(module_name)
    assert spec is not None and spec.origin is not None, module_name
    with open(spec.origin, encoding="utf-8") as f:
        return f.read()
