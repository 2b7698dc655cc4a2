"""What the source readers return: a dataset in arrays, or a folder of image files as listed.

It has a module of its own so that `sources.read_source`, the readers it dispatches to (such as
`image_folder`) and ingest can all import it without importing each other, or Pillow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class SourceData:
    """A dataset as read from its source; `test_*` are None when the source has no test split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray | None
    test_labels: np.ndarray | None
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class ImageFiles:
    """The images of one split: paths and their class indices, in a fixed (sorted) order."""

    paths: tuple[Path | str, ...]  # str: an object in a bucket, by its URL
    labels: np.ndarray


@dataclass(frozen=True)
class ImageFormat:
    """What every decoded image becomes (`components.images.decode_image`'s target, for ingest and predict)."""

    height: int
    width: int
    channels: int  # 1 (Pillow mode L) or 3 (RGB)
    resize: bool  # False: an image of another size is a bad file


@dataclass(frozen=True)
class ImageFolder:
    """A `folder:` source as listed, not yet decoded: the files of each part, the classes, the image format."""

    folder_dir: Path | str  # str: a bucket URL
    train_files: ImageFiles
    test_files: ImageFiles | None  # None without a `test/` folder
    class_names: tuple[str, ...]
    image_format: ImageFormat


@dataclass(frozen=True)
class DecodedChunk:
    """Some files decoded: the images that could be read, their labels, and (path, reason) of the others."""

    images: np.ndarray
    labels: np.ndarray
    bad_files: list[tuple[str, str]]
