"""The `folder:DIR` source: one sub-folder of PNG or JPEG files per class, decoded with Pillow.

The file list is built first (cheap), then every image is decoded straight into one preallocated
array, so a folder of 100k small images is held in memory once, as uint8 pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from components.config import is_class_name
from components.errors import UserError
from components.source_data import SourceData

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GRAYSCALE_MODES = ("1", "L", "LA")
# 16-bit and float pixels have no single right mapping to 0..255 (a 12-bit sensor, HDR), so they are refused.
UNSUPPORTED_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
MAX_LISTED_REASONS = 5  # in the message about bad files; each reason is said once, with its count
EXAMPLES_PER_REASON = 3


@dataclass(frozen=True)
class ImageFiles:
    """The images of one split: paths and their class indices, in a fixed (sorted) order."""

    paths: tuple[Path, ...]
    labels: np.ndarray


@dataclass(frozen=True)
class ImageFormat:
    """What every decoded image becomes."""

    height: int
    width: int
    channels: int  # 1 (Pillow mode L) or 3 (RGB)
    resize: bool  # False: an image of another size is a bad file


class BadImageError(Exception):
    """One image file that cannot be used; the message is the reason, for the user."""


def read_image_folder(folder_dir: Path, image_size: tuple[int, ...], channels: int,
                      on_bad_file: str) -> SourceData:
    """Read `folder_dir/<class>/*.png|jpg`, or `folder_dir/{train,test}/<class>/...` when `train/` exists.

    Args:
        folder_dir: the folder named by `data.source=folder:DIR`.
        image_size: (height, width) to resize every image to; () keeps the first image's size.
        channels: 1 or 3 to convert every image to; 0 keeps the first image's (grayscale -> 1, else 3).
        on_bad_file: "fail" stops on any unreadable image, listing them; "skip" drops and counts them.

    Returns:
        uint8 images [N, H, W, C] and labels; `test_*` None without a `test/` folder.

    Raises:
        UserError: no such folder, no class folders, an empty class, a test class missing from train,
            or (with on_bad_file=fail) unreadable images.
    """
    if not folder_dir.is_dir():
        raise UserError(f"data.source=folder:{folder_dir}: no such folder; point it at a folder with one "
                        "sub-folder of PNG or JPEG images per class")
    split_dirs = _split_dirs(folder_dir)
    class_names = _class_names(split_dirs["train"])
    files = {split: list_image_files(split_dir, class_names) for split, split_dir in split_dirs.items()}
    image_format = _image_format(files["train"], split_dirs["train"], image_size, channels)
    decoded = {split: decode_images(split_files, image_format) for split, split_files in files.items()}
    bad_files = tuple(bad for _, _, split_bad in decoded.values() for bad in split_bad)
    if bad_files and on_bad_file == "fail":
        raise UserError(_bad_files_message(folder_dir, bad_files))
    if bad_files:
        log.warning("folder: skipped %d unreadable image file(s) (data.on_bad_file=skip), e.g. %s (%s)",
                    len(bad_files), *bad_files[0])
    test_images, test_labels = decoded["test"][:2] if "test" in decoded else (None, None)
    return SourceData(decoded["train"][0], decoded["train"][1], test_images, test_labels, class_names, bad_files)


def list_image_files(split_dir: Path, class_names: tuple[str, ...]) -> ImageFiles:
    """Every PNG or JPEG (by name) under `split_dir/<class>/`, sorted; other files are ignored with one warning."""
    paths, labels, ignored = [], [], []
    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir())
    for class_dir in class_dirs:
        if class_dir.name not in class_names:
            raise UserError(f"{class_dir}: class {class_dir.name!r} has no folder in the training data "
                            f"(classes: {', '.join(class_names)}); add training images for it or remove it")
        files = sorted(p for p in class_dir.rglob("*") if p.is_file())
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise UserError(f"{class_dir}: class folder has no PNG or JPEG images; add images or remove the folder")
        ignored += [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        paths += images
        labels += [class_names.index(class_dir.name)] * len(images)
    if ignored:
        log.warning("folder: ignored %d file(s) that are not PNG or JPEG by name, e.g. %s", len(ignored), ignored[0])
    return ImageFiles(tuple(paths), np.array(labels, dtype=np.int64))


def decode_images(files: ImageFiles, image_format: ImageFormat) -> tuple[np.ndarray, np.ndarray, list]:
    """Decode `files` into one uint8 array; returns images, labels and (path, reason) of the bad files."""
    shape = (len(files.paths), image_format.height, image_format.width, image_format.channels)
    images = np.empty(shape, dtype=np.uint8)
    keep = np.ones(len(files.paths), dtype=bool)
    bad_files = []
    for index, path in enumerate(files.paths):
        try:
            images[index] = decode_image(path, image_format)
        except BadImageError as error:
            keep[index] = False
            bad_files.append((str(path), str(error)))
    if bad_files:  # compact in place: no second copy of the images
        good = np.flatnonzero(keep)
        for target, source in enumerate(good):
            images[target] = images[source]
        images = images[: len(good)]
    return images, files.labels[keep], bad_files


def decode_image(path: Path, image_format: ImageFormat) -> np.ndarray:
    """One image as uint8 [H, W, C] in `image_format`.

    Raises:
        BadImageError: empty, not an image, truncated or corrupt, unsupported mode, or the wrong size.
    """
    if path.stat().st_size == 0:
        raise BadImageError("empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            _check_mode(image.mode)
            image.load()
            return _to_format(image, image_format)
    except UnidentifiedImageError:
        raise BadImageError("not an image, or its header is cut off (Pillow cannot identify it)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadImageError(f"truncated or corrupt ({error})") from None


def _to_format(image: Image.Image, image_format: ImageFormat) -> np.ndarray:
    size = (image_format.width, image_format.height)
    if image.size != size and not image_format.resize:
        # The same words for every such file, so the message says them once and counts the files.
        raise BadImageError(f"not {size[1]}x{size[0]} pixels (height x width) like the first image; set "
                            f"data.image_size=({size[1]}, {size[0]}) to resize every image")
    image = image.convert("L" if image_format.channels == 1 else "RGB")
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image).reshape(image_format.height, image_format.width, image_format.channels)


def _check_mode(mode: str) -> None:
    if mode in UNSUPPORTED_MODES:
        raise BadImageError(f"unsupported mode {mode} (16-bit or float pixels); save it as an 8-bit PNG or JPEG")


def _image_format(files: ImageFiles, train_dir: Path, image_size: tuple[int, ...], channels: int) -> ImageFormat:
    """The configured size and channels; what is not configured comes from the first readable image."""
    width = height = mode = None
    for path in files.paths:
        try:
            with Image.open(path) as image:
                if image.mode not in UNSUPPORTED_MODES:
                    (width, height), mode = image.size, image.mode
                    break
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            continue  # reported with its reason when it is decoded
    if mode is None:
        raise UserError(f"{train_dir}: none of the {len(files.paths)} image files can be read; "
                        "check that they are 8-bit PNG or JPEG images")
    if image_size:
        height, width = image_size
    channels = channels or (1 if mode in GRAYSCALE_MODES else 3)
    return ImageFormat(height, width, channels, resize=bool(image_size))


def _split_dirs(folder_dir: Path) -> dict[str, Path]:
    if not (folder_dir / "train").is_dir():
        return {"train": folder_dir}
    if (folder_dir / "test").is_dir():
        return {"train": folder_dir / "train", "test": folder_dir / "test"}
    return {"train": folder_dir / "train"}


def _class_names(train_dir: Path) -> tuple[str, ...]:
    names = tuple(sorted(p.name for p in train_dir.iterdir() if p.is_dir()))
    if not names:
        raise UserError(f"{train_dir}: no class sub-folders, so no images; put each class's PNG or JPEG "
                        "files in a sub-folder named after the class")
    unprintable = [name for name in names if not is_class_name(name)]
    if unprintable:
        raise UserError(f"{train_dir}: class folder name {unprintable[0]!r} has a line break or another "
                        "unprintable character, which labels.txt cannot hold; rename the folder")
    return names


def _bad_files_message(folder_dir: Path, bad_files: tuple[tuple[str, str], ...]) -> str:
    """One line for any number of bad files: each reason once, with its count and a few examples."""
    by_reason: dict[str, list[str]] = {}
    for path, reason in bad_files:
        by_reason.setdefault(reason, []).append(_relative(path, folder_dir))
    parts = []
    for reason, paths in sorted(by_reason.items(), key=lambda item: -len(item[1]))[:MAX_LISTED_REASONS]:
        if len(paths) == 1:
            parts.append(f"{paths[0]}: {reason}")
            continue
        examples = ", ".join(paths[:EXAMPLES_PER_REASON]) + (", ..." if len(paths) > EXAMPLES_PER_REASON else "")
        parts.append(f"{len(paths)} files: {reason} ({examples})")
    if len(by_reason) > MAX_LISTED_REASONS:
        parts.append(f"and {len(by_reason) - MAX_LISTED_REASONS} other reasons")
    return (f"{len(bad_files)} unreadable image file{'s' * (len(bad_files) != 1)} in {folder_dir}: "
            f"{'; '.join(parts)}; fix or remove them, or set data.on_bad_file=skip to skip them")


def _relative(path: str, folder_dir: Path) -> str:
    try:
        return str(Path(path).relative_to(folder_dir))
    except ValueError:
        return path
