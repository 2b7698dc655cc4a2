"""Wiring: configuration, the orchestrator that orders the stages, the command lines, and the Python API.

    from pipeline import run, load_model
    manifest = run("smoke", {"train.epochs": 3}, workdir="work")  # as `python -m pipeline.run` (pipeline.api.run)
    model = load_model("work/saved_models/digits")                  # its newest version, ONNX Runtime
    model.predict(["sample_images/0-7.png"])                         # [Prediction(labels=('7', ...), ...)]

Importing the package loads nothing else; each name loads its module when first used, so
`import pipeline` loads no TensorFlow, and `pipeline.load_model` none either. `pipeline.run` is the
module of the command line `python -m pipeline.run`, which makes itself callable as `pipeline.api.run`
(`pipeline/run.py` says why).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what a type checker should see: the functions, not the callable module
    from pipeline.api import load_model, run

__all__ = ["load_model", "run"]


def __getattr__(name: str) -> Any:
    """`run` and `load_model`, imported when first asked for (`import pipeline` stays light)."""
    if name == "run":
        return importlib.import_module("pipeline.run")
    if name == "load_model":
        from pipeline.api import load_model

        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
