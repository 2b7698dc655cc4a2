"""The dataset every source reader returns.

It has a module of its own so that `sources.read_source` and the readers it dispatches to (such as
`image_folder`) can all import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SourceData:
    """A dataset as read from its source; `test_*` are None when the source has no test split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray | None
    test_labels: np.ndarray | None
    class_names: tuple[str, ...]
    skipped_files: tuple[tuple[str, str], ...] = ()  # (path, reason) of unreadable files skipped
