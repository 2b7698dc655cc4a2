"""Keeping TensorFlow's start-up noise out of sight: its C++ lines while it loads, its logger, library warnings.

Used by both entry points that run stages (`python -m pipeline.run` and `pipeline.api.run`); kept in a
module of its own because it is an import hook, not part of either command.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import warnings
from contextlib import contextmanager
from types import ModuleType
from typing import Iterator, Sequence


def quiet_tensorflow(verbose: bool) -> None:
    """Keep TensorFlow's start-up lines (oneDNN, CUDA not found) and library warnings out of sight.

    TensorFlow's C++ logging prints some lines while it loads, before it reads TF_CPP_MIN_LOG_LEVEL
    from a process that set it itself, so stderr is pointed at /dev/null while it loads. It is not
    imported here: only a stage that computes needs it (a fully cached run loads none, and takes a
    fraction of its import time), so the redirection waits for whatever imports it first.
    """
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # Set before the import: TensorFlow leaves its logger's level alone when the root logger has handlers.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if "tensorflow" not in sys.modules and not any(isinstance(finder, _QuietImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport("tensorflow"))


class _QuietImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Loads one package with stderr pointed at /dev/null, the first time anything imports it.

    It finds the package as the other finders would and wraps only the loading; the module keeps its
    own loader. Errors still surface: an import failure is a Python exception, raised after stderr is
    back.
    """

    def __init__(self, package: str):
        self.package = package
        self.loader: importlib.abc.Loader | None = None
        self.searched = False

    def find_spec(self, name: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if name != self.package or self.searched:
            return None
        self.searched = True  # once; and the search below is answered by the other finders
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__.loader = module.__loader__ = self.loader
        with _stderr_to_devnull():
            self.loader.exec_module(module)


@contextmanager
def _stderr_to_devnull() -> Iterator[None]:
    """File descriptor 2 points at /dev/null inside the block: C++ code writes there, not to sys.stderr."""
    sys.stderr.flush()
    saved_stderr, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
        os.close(devnull)
