"""The defaults a data source implies: the model's name and the augmentation.

`export.model_name=""` and `train.augment=auto` leave them to the data; `pipeline.registry.derived_defaults`
names them with these functions, for the config (filled in when it is resolved) and for what counts as
changed (the report, `pipeline.runs`). Policies, so they live apart from the sections and their checks.
"""

from __future__ import annotations

import re
from pathlib import Path

# Data whose classes survive a left-right flip (a shirt mirrored is a shirt; a mirrored 3 is no digit).
FLIP_INVARIANT_DATA = ("fashion_mnist", "cifar10", "cifar100")


def model_name_from_source(source: str) -> str:
    """The default model name for a data source: `digits`, `fashion_mnist`, the folder's or file's name."""
    kind, _, argument = source.partition(":")
    if kind == "tfds":
        name = argument
    elif kind in ("idx", "folder", "npz"):
        name = Path(argument.rstrip("/")).stem if kind == "npz" else Path(argument.rstrip("/")).name
    else:
        name = kind
    name = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()
    return name[:100] or "model"


def augmentation_for(source: str) -> str:
    """What `train.augment=auto` means for a data source: shift+flip where a flip keeps the class."""
    return "shift+flip" if model_name_from_source(source) in FLIP_INVARIANT_DATA else "shift"
