"""Command line: `python -m pipeline.predict MODEL_DIR_OR_URL IMAGE_OR_FOLDER... [--top-k K]
[--format table|json|csv] [--backend onnx|litert|onnx-int8|litert-int8|savedmodel]`.

Classifies image files with an exported version (`components.loaded_model`, the same code as
`pipeline.load_model`), in batches, through ONNX Runtime by default. It imports no TensorFlow unless
`--backend savedmodel` asks for it, so it starts in a fraction of a second. A model in a bucket
(`s3://BUCKET/models/digits`) is fetched into the local cache once (`components.bucket_models`).
Exit codes: 0 success, 2 a user's mistake (one line on stderr), 1 anything else, 141 stdout's reader
closed the pipe (`| head`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NoReturn, Sequence

import numpy as np

from components.bucket_models import local_model
from components.errors import UserError
from components.images import IMAGE_SUFFIXES  # what a folder is searched for, as ingest does
from components.loaded_model import LoadedModel, Prediction, load_exported, to_pixels, version_dir_of
from components.model_files import BACKEND_HELP, BACKENDS

DEFAULT_BATCH_SIZE = 256  # images per model call


@dataclass(frozen=True)
class Classified:
    """One image file and its classes, most probable first."""

    path: Path
    prediction: Prediction


@dataclass(frozen=True)
class Classification:
    """What a command classified, and the files it skipped (each as one line saying why)."""

    classified: list[Classified]
    skipped: list[str]


class _ArgumentParser(argparse.ArgumentParser):
    """Reports a bad command line as one `error:` line, like every other mistake of the user's."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line's arguments, parsed; a bad one exits 2 with one `error:` line.

    Args:
        argv: the arguments after the program's name (`sys.argv[1:]` if None).

    Returns:
        model_dir, images, top_k, format, skip_bad, batch_size and backend.
    """
    parser = _ArgumentParser(
        prog="python -m pipeline.predict",
        description="Classify image files with an exported model (ONNX Runtime or LiteRT; no TensorFlow).")
    # a text, not a Path: Path("s3://bucket/m") is "s3:/bucket/m"
    parser.add_argument("model_dir", metavar="MODEL_DIR",
                        help="a version folder (saved_models/digits/3) or a model folder (its newest version), "
                             "or either in a bucket (s3://BUCKET/models/digits, gs://...), fetched into the cache")
    parser.add_argument("images", type=Path, nargs="+", metavar="IMAGE_OR_FOLDER",
                        help="image files (any extension), or folders searched recursively for "
                             f"{', '.join(IMAGE_SUFFIXES)} files")
    parser.add_argument("--top-k", type=_positive_int, default=1, metavar="K",
                        help="the K most probable classes of each image (default: 1)")
    parser.add_argument("--format", choices=sorted(FORMATTERS), default="table",
                        help="table (aligned, for people), json (one array) or csv (path,rank,label,probability)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip files that are not readable images, and list them on stderr")
    parser.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE, metavar="N",
                        help=f"images per model call (default: {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--backend", choices=BACKENDS, default="onnx",
                        help=f"which file classifies (default: onnx). {BACKEND_HELP}")
    return parser.parse_args(argv)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def find_images(inputs: Sequence[Path]) -> list[Path]:
    """The files to classify: files as given, whatever their extension, and each folder's image files.

    Args:
        inputs: files and folders, in the order given.

    Returns:
        The files in that order; a folder's files sorted by path, searched recursively.

    Raises:
        UserError: an input that does not exist, or no file at all.
    """
    paths: list[Path] = []
    for path in inputs:
        if path.is_dir():
            paths += sorted(found for found in path.rglob("*")
                            if found.suffix.lower() in IMAGE_SUFFIXES and found.is_file())
        elif path.exists():
            paths.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    if not paths:
        raise UserError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}; "
                        "give image files or folders that hold some")
    return paths


def classify_files(model: LoadedModel, paths: Sequence[Path], batch_size: int = DEFAULT_BATCH_SIZE,
                   top_k: int | None = None, skip_bad: bool = False) -> Classification:
    """Classify image files, `batch_size` at a time.

    Args:
        model: the exported version to classify with.
        paths: image files; each is decoded, converted and resized to what the model takes.
        batch_size: files decoded and classified per model call.
        top_k: classes kept per image, most probable first (all if None).
        skip_bad: skip files that are not readable images instead of stopping.

    Returns:
        The classified files in the order given, and the skipped ones.

    Raises:
        UserError: a file that is not a readable image, unless `skip_bad`.
    """
    classified: list[Classified] = []
    skipped: list[str] = []
    for start in range(0, len(paths), batch_size):
        batch, pixels = [], []
        for path in paths[start:start + batch_size]:
            try:
                pixels.append(to_pixels(path, model.input))
                batch.append(path)
            except UserError as error:
                if not skip_bad:
                    raise UserError(f"{error}; --skip-bad skips such files") from None
                skipped.append(str(error))
        if pixels:
            classified += map(Classified, batch, model.predict(np.stack(pixels), top_k))
    return Classification(classified, skipped)


def format_table(classified: Sequence[Classified]) -> str:
    """Aligned columns path, label, probability; an image's further classes follow on lines of their own."""
    rows = [("path", "label", "probability")]
    for item in classified:
        for rank, (label, probability) in enumerate(zip(item.prediction.labels, item.prediction.probabilities)):
            rows.append((str(item.path) if rank == 0 else "", label, f"{probability:.4f}"))
    path_width = max(len(row[0]) for row in rows)
    label_width = max(len(row[1]) for row in rows)
    return "\n".join(f"{path:<{path_width}}  {label:<{label_width}}  {probability:>11}".rstrip()
                     for path, label, probability in rows)


def format_json(classified: Sequence[Classified]) -> str:
    """One JSON array: `{"path", "predictions": [{"label", "probability"}, ...]}` per image, best first."""
    return json.dumps([{"path": str(item.path),
                        "predictions": [{"label": label, "probability": probability} for label, probability
                                        in zip(item.prediction.labels, item.prediction.probabilities)]}
                       for item in classified], indent=2)


def format_csv(classified: Sequence[Classified]) -> str:
    """CSV with the header `path,rank,label,probability`, one row per image and class, rank 1 the best."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("path", "rank", "label", "probability"))
    for item in classified:
        for rank, (label, probability) in enumerate(zip(item.prediction.labels, item.prediction.probabilities), 1):
            writer.writerow((item.path, rank, label, probability))
    return buffer.getvalue().rstrip("\n")


FORMATTERS: dict[str, Callable[[Sequence[Classified]], str]] = {
    "table": format_table, "json": format_json, "csv": format_csv,
}


def skipped_report(skipped: Sequence[str], num_files: int) -> str:
    """The lines `--skip-bad` writes to stderr: how many files were skipped, then why, one per line."""
    return "\n".join([f"skipped {len(skipped)} of {num_files} files, not readable images:",
                      *(f"  {reason}" for reason in skipped)])


def main(argv: Sequence[str] | None = None) -> int:
    """Classify the command line's images and print the result on stdout.

    Args:
        argv: the arguments after the program's name (`sys.argv[1:]` if None).

    Returns:
        The exit code: 0 when at least one image was classified, 2 after a user's mistake.
    """
    args = parse_args(argv)
    try:
        model_dir = local_model(args.model_dir)  # a bucket's version is fetched (once: the cache keeps it)
        version_dir_of(model_dir)  # no export there: said before the images are looked for
        paths = find_images(args.images)
        # ONNX Runtime's thread pool pays from batches of 17 images on (components/onnx_session.py).
        model = load_exported(model_dir, args.backend, batch_hint=min(args.batch_size, len(paths)))
        result = classify_files(model, paths, args.batch_size, args.top_k, args.skip_bad)
        if result.skipped:
            print(skipped_report(result.skipped, len(paths)), file=sys.stderr)
        if not result.classified:
            raise UserError(f"none of the {len(paths)} files is a readable image")
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        print(FORMATTERS[args.format](result.classified), flush=True)
    except BrokenPipeError:  # the reader left (`| head -1`): quietly, as pipeline.run's print_output does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
