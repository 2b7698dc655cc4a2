"""Benchmark: peak resident memory and wall time of a whole run on Fashion-MNIST and on it repeated 4x.

    python bench/scale_memory.py [--repeats 3] [--copies 1 4] [--repo DIR] [section.key=value ...]

Each run is a whole `python -m pipeline.run` on the data (1 epoch of a small model, so the data's
share of memory shows) in a fresh workdir, started from a small wrapper process that reports
its child's peak resident memory (`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`, what
`/usr/bin/time -v` calls "Maximum resident set size"). `--copies 4` writes an IDX folder whose
training split is Fashion-MNIST's 60,000 images four times over (240,000); the test split is kept.
`--repo` runs another checkout (e.g. a `git worktree` of the commit before a change) on the same data.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
SMALL_RUN = ("train.epochs=1", "model.conv_widths=(16,)", "model.dense_units=32", "report.measure_latency=false")
WRAPPER = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)  # kB on Linux
"""


def write_copies(out_dir: Path, copies: int) -> Path:
    """Fashion-MNIST as uncompressed IDX files, the training split repeated `copies` times."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        with gzip.open(FASHION_DIR / f"{name}.gz", "rb") as source:
            data = source.read()
        if name.startswith("train"):
            ndim = data[3]
            header, body = bytearray(data[: 4 + 4 * ndim]), data[4 + 4 * ndim:]
            header[4:8] = (int.from_bytes(header[4:8], "big") * copies).to_bytes(4, "big")
            data = bytes(header) + body * copies
        (out_dir / name).write_bytes(data)
    return out_dir


def measure_run(repo: Path, data_dir: Path, overrides: list[str]) -> dict:
    """One whole run in a fresh workdir: exit code, wall seconds, peak RSS (MiB), test accuracy."""
    with tempfile.TemporaryDirectory() as workdir:
        command = [sys.executable, "-m", "pipeline.run", "--workdir", workdir, f"data.source=idx:{data_dir}",
                   "data.val_fraction=0.0833", *SMALL_RUN, *overrides]  # the fashion preset's split
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", WRAPPER, *command], cwd=repo, capture_output=True,
                                text=True, check=True)
        seconds = time.perf_counter() - start
        code, peak_kib = (int(value) for value in result.stdout.split())
        manifests = list(Path(workdir, "runs").glob("*/manifest.json"))
        accuracy = json.loads(manifests[0].read_text())["results"].get("test_accuracy") if manifests else None
    return {"exit": code, "seconds": round(seconds, 1), "peak_mib": round(peak_kib / 1024), "accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repo", type=Path, default=REPO_DIR, help="the checkout to run")
    parser.add_argument("overrides", nargs="*", help="more section.key=value for every run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        data = {copies: write_copies(Path(scratch) / f"x{copies}", copies) for copies in args.copies}
        for copies, data_dir in data.items():
            runs = [measure_run(args.repo, data_dir, args.overrides) for _ in range(args.repeats)]
            print(json.dumps({"copies": copies, "repo": str(args.repo), "runs": runs,
                              "median_peak_mib": statistics.median(run["peak_mib"] for run in runs),
                              "median_seconds": statistics.median(run["seconds"] for run in runs)}), flush=True)


if __name__ == "__main__":
    main()
