"""The `folder:DIR` source: one sub-folder of PNG or JPEG files per class, decoded by `components.images`.

The file list is built first (cheap) and the splits are chosen on its labels; ingest then decodes
each split's files chunk by chunk while it writes them, so no more than a few chunks of pixels are
ever in memory, however many images the folder holds. Each file is decoded by the same function as
predict and the server use (`components.images.decode_image`), so a photo is the same pixels in
training as in serving: turned upright by its EXIF orientation, converted and resized alike.

Chunks are decoded in worker processes, not threads: Pillow holds the GIL for most of the work on
small images. Decoding the 70,000 28x28 PNGs of Fashion-MNIST (`bench/ingest_memory.py`'s folder;
2 CPU cores, TensorFlow loaded) took 4.3-4.4 s in the process itself, 9.5-10.1 s with 2 threads and
2.8 s with 2 spawned processes; the whole ingest of that folder 6.4 s in the process, 4.7 s with
the processes. Starting them costs about 0.5 s, so splits of fewer than `POOL_MIN_FILES` files are
decoded in the process itself.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from components import remote
from components.config import is_class_name
from components.errors import UserError, first_line
from components.images import IMAGE_SUFFIXES, BadImageError, ImageHeader, WrongSizeError, decode_image, read_header
from components.source_data import DecodedChunk, ImageFiles, ImageFolder, ImageFormat

log = logging.getLogger(__name__)

# Headers read to choose the size and channels not configured: evenly spaced over the training files,
# the first among them. A header costs about half a small image's decoding (0.18 vs 0.30-0.33 ms for
# a 28x28 PNG, best of 5 on 2 busy cores) and is read here, before the workers start: all 70,000 of
# Fashion-MNIST would add some 13 s to a 5 s ingest. A few hundred find the common size unless sizes
# are split nearly evenly, and then the message about the others says to set data.image_size anyway.
MAX_SAMPLED_HEADERS = 256
RESIZE_ADVICE_END = "to resize them all"  # how the reason of every file of another size ends
MAX_LISTED_REASONS = 5  # in the message about bad files; each reason is said once, with its count
EXAMPLES_PER_REASON = 3
POOL_MIN_FILES = 8192  # fewer files decode faster in the process itself than the worker processes start
# Pixels one decoding task returns, the chunk a folder source is written in: 4 MiB, smaller than an
# array source's chunk (`shards.layout.CHUNK_BYTES`), since up to two tasks per worker are in flight at once.
DECODE_TASK_BYTES = 4 * 2**20
MAX_CHUNK_FILES = 1024  # files per task at most, so small images still spread over the workers


def list_image_folder(folder_dir: Path | str, image_size: tuple[int, ...], channels: int) -> ImageFolder:
    """List `folder_dir/<class>/*.png|jpg`, or `folder_dir/{train,test}/<class>/...` when `train/` exists.

    Only headers are read here, of a few hundred training images at most (for the size and channels
    not configured); `decode_chunks` decodes the images.

    Args:
        folder_dir: the folder named by `data.source=folder:DIR`: a local folder, or a bucket URL (one
            listing, then the sampled headers fetched; `list_bucket_image_folder`).
        image_size: (height, width) to resize every image to; () keeps the most common size (as shown
            upright), and an image of another size is a bad file.
        channels: 1 or 3 to convert every image to; 0: the most common (grayscale -> 1, else 3).

    Returns:
        The files of `train` (and `test`, if there is a `test/` folder), the class names and the format.

    Raises:
        UserError: no such folder, no class folders, an empty class, a test class missing from train,
            or no readable training image.
    """
    if isinstance(folder_dir, str):
        return list_bucket_image_folder(folder_dir, image_size, channels)
    if not folder_dir.is_dir():
        raise UserError(f"data.source=folder:{folder_dir}: no such folder; point it at a folder with one "
                        "sub-folder of PNG or JPEG images per class")
    split_dirs = _split_dirs(folder_dir)
    class_names = _class_names(split_dirs["train"])
    files = {split: list_image_files(split_dir, class_names) for split, split_dir in split_dirs.items()}
    image_format = _image_format(files["train"], split_dirs["train"], image_size, channels)
    return ImageFolder(folder_dir, files["train"], files.get("test"), class_names, image_format)


def list_bucket_image_folder(url: str, image_size: tuple[int, ...], channels: int) -> ImageFolder:
    """`list_image_folder` for a folder in a bucket: the same layout, from one listing of its objects."""
    names = [item.name for item in remote.list_objects(url)]
    parts = {"train": names}
    if any(name.startswith("train/") for name in names):
        parts = {split: [name.partition("/")[2] for name in names if name.startswith(f"{split}/")]
                 for split in ("train", "test")}
    class_names = _class_names_of(url if len(parts) == 1 else remote.join(url, "train"),
                                  sorted({name.split("/")[0] for name in parts["train"] if "/" in name}))
    files = {split: _bucket_image_files(url if len(parts) == 1 else remote.join(url, split), split_names, class_names)
             for split, split_names in parts.items() if split_names}
    image_format = _image_format(files["train"], url, image_size, channels)
    return ImageFolder(url, files["train"], files.get("test"), class_names, image_format)


def _bucket_image_files(split_url: str, names: list[str], class_names: tuple[str, ...]) -> ImageFiles:
    """The PNG and JPEG objects of `split_url/<class>/...` (`names` relative to it), as `list_image_files` lists."""
    by_class: dict[str, list[str]] = {}
    for name in names:
        if "/" in name:
            by_class.setdefault(name.split("/")[0], []).append(name)
    paths: list[str] = []
    labels: list[int] = []
    ignored: list[str] = []
    for class_name in sorted(by_class):
        class_url = remote.join(split_url, class_name)
        if class_name not in class_names:
            raise UserError(f"{class_url}: class {class_name!r} has no folder in the training data "
                            f"(classes: {', '.join(class_names)}); add training images for it or remove it")
        # In the order a local folder's are listed (by path part: "a/b.png" before "a-c.png"), so the same
        # files make the same splits wherever they lie.
        images = [name for name in sorted(by_class[class_name], key=lambda name: name.split("/"))
                  if Path(name).suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise UserError(f"{class_url}: class folder has no PNG or JPEG images; add images or remove the folder")
        ignored += [name for name in by_class[class_name] if Path(name).suffix.lower() not in IMAGE_SUFFIXES]
        paths += [remote.join(split_url, name) for name in images]
        labels += [class_names.index(class_name)] * len(images)
    if ignored:
        log.warning("folder: ignored %d object(s) that are not PNG or JPEG by name, e.g. %s", len(ignored),
                    remote.join(split_url, ignored[0]))
    return ImageFiles(tuple(paths), np.array(labels, dtype=np.int64))


def decode_chunks(files: ImageFiles, rows: np.ndarray, image_format: ImageFormat) -> Iterator[DecodedChunk]:
    """The files at `rows`, decoded in order, a chunk at a time (in worker processes for many files).

    Args:
        files: one part of the folder (train or test).
        rows: which of its files, in the order wanted.
        image_format: what every image becomes.

    Yields:
        Chunks in the order of `rows`; an unreadable file is left out of its chunk and named in it.
    """
    pixels = image_format.height * image_format.width * image_format.channels
    chunk_files = max(1, min(MAX_CHUNK_FILES, DECODE_TASK_BYTES // pixels))
    starts = range(0, len(rows), chunk_files)
    tasks = [(tuple(files.paths[row] for row in rows[start: start + chunk_files]), image_format) for start in starts]
    results = _ordered_map(_decode_files, tasks, use_pool=len(rows) >= POOL_MIN_FILES)
    for start, (images, keep, bad_files) in zip(starts, results):
        yield DecodedChunk(images, files.labels[rows[start: start + chunk_files]][keep], bad_files)


def _ordered_map(function: Callable[..., Any], tasks: list[tuple], use_pool: bool) -> Iterator[Any]:
    """`function(*task)` for each task, in order; in spawned worker processes when `use_pool`.

    At most two tasks per worker are in flight, so results never pile up faster than they are used.
    Spawned, not forked: the parent has usually loaded TensorFlow, whose threads do not survive a
    fork. A spawned worker imports the main module first; where that fails (a script read from
    stdin, or one without `if __name__ == "__main__":`), the rest is done in this process.
    """
    done = 0
    if use_pool and len(tasks) > 1:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            pending: deque[Future] = deque()
            for task in tasks:
                pending.append(pool.submit(function, *task))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
                    done += 1
            while pending:
                yield pending.popleft().result()
                done += 1
        except BrokenProcessPool:
            log.warning("folder: decoding in this process instead: a worker process could not start or died "
                        "(a script that runs the pipeline needs `if __name__ == \"__main__\":`)")
        finally:
            pool.shutdown(cancel_futures=True)
    yield from (function(*task) for task in tasks[done:])


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


def _decode_files(paths: tuple[Path | str, ...], image_format: ImageFormat) -> tuple[np.ndarray, np.ndarray, list]:
    """Decode `paths` into one uint8 array; returns the images read, which paths they are, and the bad files.

    Objects in a bucket are fetched together first (concurrently: one at a time, a small image costs a
    round trip each), then decoded from their bytes.
    """
    images = np.empty((len(paths), image_format.height, image_format.width, image_format.channels), dtype=np.uint8)
    keep = np.ones(len(paths), dtype=bool)
    bad_files = []
    contents = remote.read_many([str(path) for path in paths]) if paths and _in_bucket(paths[0]) else {}
    for index, path in enumerate(paths):
        try:
            images[index] = decode_image(_readable(path, contents), image_format)
        except WrongSizeError as error:
            keep[index] = False
            bad_files.append((str(path), f"{error} {_resize_advice(image_format)}"))
        except BadImageError as error:
            keep[index] = False
            bad_files.append((str(path), str(error)))
    return images[keep], keep, bad_files


def _in_bucket(path: Path | str) -> bool:
    return isinstance(path, str) and remote.is_url(path)


def _readable(path: Path | str, contents: dict[str, bytes | Exception]) -> Path | str | bytes:
    """What `decode_image` reads for `path`: the file, or the object's bytes fetched (a missing one is a bad file)."""
    if not contents:
        return path
    content = contents[str(path)]
    if isinstance(content, Exception):
        raise BadImageError(f"cannot be read from the store ({type(content).__name__}: {first_line(content)})")
    return content


def _resize_advice(image_format: ImageFormat) -> str:
    """What a wrong-size file's reason ends with; the same words for all, so the message says them once."""
    return (f"like most images; set data.image_size=({image_format.height}, {image_format.width}) "
            f"{RESIZE_ADVICE_END}")


def _image_format(files: ImageFiles, train_dir: Path | str, image_size: tuple[int, ...], channels: int) -> ImageFormat:
    """The configured size and channels; what is not configured is the most common in a sample of the headers.

    The most common, not the first file's: a folder whose first image alone had another size once
    had its other images all called unreadable.
    """
    headers = _sample_headers(files.paths)
    if not headers:
        raise UserError(f"{train_dir}: none of the {len(files.paths)} image files can be read; "
                        "check that they are 8-bit PNG or JPEG images")
    # Counter.most_common keeps the first seen of equally common values, so a tie goes to the earlier file.
    height, width = image_size or Counter((h.height, h.width) for h in headers).most_common(1)[0][0]
    channels = channels or Counter(h.channels for h in headers).most_common(1)[0][0]
    return ImageFormat(height, width, channels, resize=bool(image_size))


def _sample_headers(paths: tuple[Path | str, ...]) -> list[ImageHeader]:
    """The readable headers of up to MAX_SAMPLED_HEADERS files spread over `paths`; if none of them is
    readable, the first readable header of all (one readable file is enough to start)."""
    rows = np.unique(np.linspace(0, len(paths) - 1, min(len(paths), MAX_SAMPLED_HEADERS)).round().astype(int))
    headers = [header for header in _headers_or_none([paths[row] for row in rows]) if header]
    if headers or len(rows) == len(paths):
        return headers
    sampled = set(rows.tolist())
    rest = [path for row, path in enumerate(paths) if row not in sampled]
    for start in range(0, len(rest), MAX_SAMPLED_HEADERS):
        headers = [header for header in _headers_or_none(rest[start: start + MAX_SAMPLED_HEADERS]) if header]
        if headers:
            return headers[:1]
    return []


def _headers_or_none(paths: list[Path | str]) -> list[ImageHeader | None]:
    """Each file's header, None where it cannot be read (reported with its reason when it is decoded)."""
    contents = remote.read_many([str(path) for path in paths]) if paths and _in_bucket(paths[0]) else {}
    headers: list[ImageHeader | None] = []
    for path in paths:
        try:
            headers.append(read_header(_readable(path, contents)))
        except BadImageError:
            headers.append(None)
    return headers


def _split_dirs(folder_dir: Path) -> dict[str, Path]:
    if not (folder_dir / "train").is_dir():
        return {"train": folder_dir}
    if (folder_dir / "test").is_dir():
        return {"train": folder_dir / "train", "test": folder_dir / "test"}
    return {"train": folder_dir / "train"}


def _class_names(train_dir: Path) -> tuple[str, ...]:
    return _class_names_of(train_dir, sorted(p.name for p in train_dir.iterdir() if p.is_dir()))


def _class_names_of(train_dir: Path | str, folder_names: list[str]) -> tuple[str, ...]:
    """The class folders' names, checked: at least one, each printable on one line of labels.txt."""
    names = tuple(folder_names)
    if not names:
        raise UserError(f"{train_dir}: no class sub-folders, so no images; put each class's PNG or JPEG "
                        "files in a sub-folder named after the class")
    unprintable = [name for name in names if not is_class_name(name)]
    if unprintable:
        raise UserError(f"{train_dir}: class folder name {unprintable[0]!r} has a line break or another "
                        "unprintable character, which labels.txt cannot hold; rename the folder")
    return names


def bad_files_message(folder_dir: Path | str, bad_files: tuple[tuple[str, str], ...]) -> str:
    """One line for any number of bad files: how many cannot be read and how many have another size, then
    each reason once, with its count and a few examples.

    Args:
        folder_dir: the source folder; paths are shown relative to it.
        bad_files: (path, reason) of every file that cannot be used.

    Returns:
        The message, ending with how to fix it or skip the files.
    """
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
    return f"{_bad_files_count(bad_files)} in {folder_dir}: {'; '.join(parts)}; fix or remove them, or set " \
           "data.on_bad_file=skip to skip them"


def _bad_files_count(bad_files: tuple[tuple[str, str], ...]) -> str:
    """E.g. "1 image file of another size and 2 unreadable image files": a file of another size reads fine."""
    other_size = sum(reason.endswith(RESIZE_ADVICE_END) for _, reason in bad_files)
    unreadable = len(bad_files) - other_size
    counts = [f"{unreadable} unreadable image file{'s' * (unreadable != 1)}"] if unreadable else []
    counts += [f"{other_size} image file{'s' * (other_size != 1)} of another size"] if other_size else []
    return " and ".join(counts)


def _relative(path: str, folder_dir: Path | str) -> str:
    if isinstance(folder_dir, str):  # a bucket URL
        return path.removeprefix(folder_dir.rstrip("/") + "/")
    try:
        return str(Path(path).relative_to(folder_dir))
    except ValueError:
        return path
