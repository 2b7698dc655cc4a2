"""The tune stage against the defaults: does a search of S seconds (plus train) beat the default config?

    python bench/tune.py [--seeds 0,1,2] [--budget 240] [--train 8000] [--test 2000] [--pruners median]

On a slice of Fashion-MNIST (the first --train training images and the first --test test images of
/usr/share/datasets/fashion-mnist, written as IDX files to a temporary folder), for each seed (train.seed,
which also seeds the search's sampler):

- default: `python -m pipeline.run --until evaluate data.source=idx:SLICE train.seed=SEED`, a fresh workdir;
- tuned: the same with `tune.max_seconds=BUDGET tune.pruner=PRUNER`, for each pruner given.

Runs go through the real CLI in a subprocess, one after another (default, then each pruner, per seed).
Printed per run: test accuracy, the tune stage's seconds against the budget (the stage may take 1.05x),
trials and pruned trials, the train stage's seconds; then per configuration the mean test accuracy over
the seeds and the mean gain over the default. The goal (issue 20): +1 point or more over the defaults.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")
REPO = Path(__file__).resolve().parents[1]


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def write_slice(out_dir: Path, num_train: int, num_test: int) -> Path:
    """The first `num_train` training and `num_test` test images of Fashion-MNIST, as an idx: folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{prefix}-{kind}-ubyte.gz"
            write_idx(out_dir / name, read_idx(FASHION / name)[:count])
    return out_dir


def run_pipeline(workdir: Path, overrides: list[str]) -> dict:
    """One run through the CLI; what this benchmark reads from its manifest."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "pipeline.run", "--workdir", str(workdir), "--until", "evaluate", *overrides]
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    manifest = json.loads(max((workdir / "runs").glob("*/manifest.json")).read_text())
    seconds = {stage["name"]: stage.get("seconds", 0.0) for stage in manifest["stages"]}
    results = manifest["results"]
    return {"test_accuracy": results["test_accuracy"], "train_seconds": seconds["train"],
            "tune_seconds": seconds.get("tune", 0.0), "trials": results.get("tune_trials", 0),
            "pruned": results.get("tune_pruned", 0), "best": results.get("tune_best", {}),
            "val_accuracy": results.get("tune_best_val_accuracy")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budget", type=float, default=240.0)
    parser.add_argument("--train", type=int, default=8000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--pruners", default="median", help="comma-separated: median, hyperband, none")
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    pruners = args.pruners.split(",")
    accuracies: dict[str, list[float]] = {"default": [], **{pruner: [] for pruner in pruners}}
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as scratch:
        data_dir = write_slice(Path(scratch) / "data", args.train, args.test)
        base = [f"data.source=idx:{data_dir}"]
        for seed in seeds:
            runs = {"default": base + [f"train.seed={seed}"]}
            runs.update({pruner: base + [f"train.seed={seed}", f"tune.max_seconds={args.budget:g}",
                                         f"tune.pruner={pruner}"] for pruner in pruners})
            for name, overrides in runs.items():
                result = run_pipeline(Path(scratch) / f"{name}-{seed}", overrides)
                accuracies[name].append(result["test_accuracy"])
                within = f" ({result['tune_seconds'] / args.budget:.3f}x the budget)" if name != "default" else ""
                print(f"seed {seed} {name:<9} test accuracy {result['test_accuracy']:.4f}  train "
                      f"{result['train_seconds']:.1f} s  tune {result['tune_seconds']:.1f} s{within}  trials "
                      f"{result['trials']} (pruned {result['pruned']})  val {result['val_accuracy']}  "
                      f"chosen {json.dumps(result['best'])}", flush=True)
    default_mean = statistics.mean(accuracies["default"])
    for name, values in accuracies.items():
        gain = statistics.mean(values) - default_mean
        print(f"{name:<9} mean test accuracy {statistics.mean(values):.4f} over seeds {seeds} "
              f"({', '.join(f'{value:.4f}' for value in values)}); {gain * 100:+.2f} points over the default")


if __name__ == "__main__":
    main()
