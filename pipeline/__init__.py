"""Wiring: configuration, the runner that orders the stages, the command lines, and the Python API.

    from pipeline import run, load_model
    manifest = run("smoke", {"train.epochs": 3}, workdir="work")  # as `python -m pipeline.run` (pipeline.api.run)
    model = load_model("work/saved_models/digits")                  # its newest version, ONNX Runtime
    model.predict(["sample_images/0-7.png"])                         # [Prediction(labels=('7', ...), ...)]

Importing the package loads nothing else; each name loads its module when first used, so
`import pipeline` loads no TensorFlow, and `pipeline.load_model` none either.

`pipeline.run` is also the module of the command line `python -m pipeline.run` (`run.main`,
`run.parse_args`). Both meanings are kept: that module is made callable, and calling it is calling
`pipeline.api.run`. Python sets a package's submodule as its attribute when the submodule is first
imported, however it is imported, so the package catches that moment (`_Package.__setattr__`).
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what a type checker should see: the functions, not the module's trick
    from pipeline.api import load_model, run

__all__ = ["load_model", "run"]


class _CallableRunModule(types.ModuleType):
    """`pipeline.run`: the command line's module, which runs the pipeline when called."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run the pipeline and return its manifest: see `pipeline.api.run` for the arguments."""
        from pipeline.api import run

        return run(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:  # help() and inspect show pipeline.api.run's arguments
        from pipeline.api import run

        return inspect.signature(run)

    def __reduce__(self) -> tuple:  # pickled by name, so it can be sent to a process pool
        return importlib.import_module, (self.__name__,)


class _Package(types.ModuleType):
    """This package: makes its `run` submodule callable as it is set here, on its first import."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "run" and type(value) is types.ModuleType:
            value.__class__ = _CallableRunModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    """`run` and `load_model`, imported when first asked for (`import pipeline` stays light)."""
    if name == "run":
        return importlib.import_module("pipeline.run")
    if name == "load_model":
        from pipeline.api import load_model

        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
