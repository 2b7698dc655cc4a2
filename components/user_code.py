"""Code a user names in a setting as `MODULE:FUNCTION`: found before any work starts, imported when used.

`MODULE` is an importable module (on `PYTHONPATH`, the current folder included under `python -m`) or
a path to a `.py` file. `find_function` checks that the function is there by reading the module's
syntax tree, without running it: a config is checked in a fraction of a second, and a module that
imports TensorFlow does not load it for a run whose stages are all cached. `load_function` imports it.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from components.errors import UserError

HOW = "give MODULE:FUNCTION, where MODULE is an importable module (on PYTHONPATH) or a path to a .py file"


def split_target(target: str, setting: str) -> tuple[str, str]:
    """`MODULE:FUNCTION` into its parts; one line naming `setting` when it is not of that form."""
    module, colon, function = target.rpartition(":")
    if not colon or not module.strip() or not function.isidentifier():
        raise UserError(f"{setting}={target!r} is not of the form MODULE:FUNCTION; {HOW}")
    return module.strip(), function


def module_path(module: str, setting: str, target: str) -> Path:
    """The source file of `module` (a dotted name or a `.py` path), found without running it."""
    if module.endswith(".py") or "/" in module or "\\" in module:
        path = Path(module).expanduser()
        if not path.is_file():
            raise UserError(f"{setting}={target}: no such file {path}; {HOW}")
        return path.resolve()
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise UserError(f"{setting}={target}: no module named {module!r} (searched PYTHONPATH and the current "
                        f"folder); {HOW}")
    return Path(spec.origin)


def find_function(target: str, setting: str) -> Path:
    """Check that `target` names a function (or class, or name) defined at the top of its module.

    Returns:
        The module's source file, whose content a fingerprint can cover.

    Raises:
        UserError: one line naming `setting`: not MODULE:FUNCTION, no such module or file, no such name in it.
    """
    module, function = split_target(target, setting)
    path = module_path(module, setting, target)
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as error:
        raise UserError(f"{setting}={target}: {path} line {error.lineno}: {error.msg}; fix the syntax error") from None
    if function not in _top_level_names(tree):
        defined = sorted(node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))
                         and not node.name.startswith("_"))
        raise UserError(f"{setting}={target}: {path} defines no {function!r}; name one of its functions"
                        + (f" ({', '.join(defined[:8])})" if defined else ""))
    return path


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(target.id for target in targets if isinstance(target, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def load_function(target: str, setting: str) -> Callable[..., Any]:
    """Import `target`'s module and return its function. An error raised by the module itself propagates."""
    module_name, function = split_target(target, setting)
    path = find_function(target, setting)
    module = _import_file(path) if module_name.endswith(".py") or "/" in module_name \
        else importlib.import_module(module_name)
    found = getattr(module, function, None)
    if not callable(found):
        raise UserError(f"{setting}={target}: {function!r} in {path} is not a function; name a function")
    return found


def _import_file(path: Path) -> ModuleType:
    """Import a `.py` file by path, once per file: under a name made from its path, so two files never clash."""
    name = f"user_code_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and pickling look their module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
