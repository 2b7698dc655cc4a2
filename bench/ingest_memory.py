"""Benchmark: wall time and peak memory of ingest for Fashion-MNIST from `idx:` and from a `folder:` copy.

    python bench/ingest_memory.py                       # idx: and a 70k-PNG folder: copy of Fashion-MNIST
    python bench/ingest_memory.py --folder-images 100000  # a flat folder of 100k PNGs (the scale check)

Each ingest runs in a fresh subprocess, which reports its own peak resident memory
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`, the figure `/usr/bin/time -v` shows). A `digits`
ingest is measured the same way as the baseline (interpreter, NumPy, scikit-learn, Pillow and
TensorFlow, which writes the TFRecord shards), so the data's share can be read off.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))

from components.sources import read_idx_dir  # noqa: E402

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
INGEST = """
import resource, sys
from pathlib import Path
from PIL import Image  # imported for every source, so the baseline includes it
from components.ingest import ingest
from components.config import DataConfig
splits = ingest(DataConfig(source=sys.argv[1]), Path(sys.argv[2]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, splits.num_examples)  # ru_maxrss: kB on Linux
"""


def measure_ingest(source: str, out_dir: Path) -> dict:
    """Run ingest of `source` in a fresh interpreter; its wall seconds, peak RSS (MiB) and split sizes."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", INGEST, source, str(out_dir)], cwd=REPO_DIR,
                            capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    peak_kib, num_examples = result.stdout.strip().split(" ", 1)
    return {"source": source, "seconds": round(seconds, 1), "peak_rss_mib": round(int(peak_kib) / 1024),
            "num_examples": num_examples}


def write_png_folder(folder_dir: Path, num_images: int | None) -> None:
    """Fashion-MNIST as PNGs: `train/<class>/` and `test/<class>/`, or (num_images) a flat folder of that many."""
    from PIL import Image

    data = read_idx_dir(FASHION_DIR)
    if num_images is None:
        parts = {"train": (data.train_images, data.train_labels), "test": (data.test_images, data.test_labels)}
    else:  # cycle through the 70k images; a shift makes the copies distinct images
        images = np.concatenate([data.train_images, data.test_images])
        labels = np.concatenate([data.train_labels, data.test_labels])
        rows = np.arange(num_images) % len(labels)
        parts = {".": (_shifted(images, rows), labels[rows])}
    for split, (images, labels) in parts.items():
        for index, (image, label) in enumerate(zip(images, labels)):
            path = folder_dir / split / f"class_{label}" / f"{index:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[..., 0]).save(path)


def _shifted(images: np.ndarray, rows: np.ndarray):
    for number, row in enumerate(rows):
        yield np.roll(images[row], number // len(images), axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder-images", type=int, default=None,
                        help="write a flat folder of this many PNGs instead of the 70k train/test copy")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        start = time.perf_counter()
        write_png_folder(tmp_dir / "pngs", args.folder_images)
        print(f"wrote the PNG folder in {time.perf_counter() - start:.0f} s", flush=True)
        sources = ["digits", f"idx:{FASHION_DIR}", f"folder:{tmp_dir / 'pngs'}"]
        if args.folder_images:
            sources = ["digits", f"folder:{tmp_dir / 'pngs'}"]
        for number, source in enumerate(sources):
            print(measure_ingest(source, tmp_dir / f"out{number}"), flush=True)


if __name__ == "__main__":
    main()
