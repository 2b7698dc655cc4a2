"""Benchmark: one process against two workers on 127.0.0.1 (train.strategy=multi_worker), same global batch.

    python bench/multi_worker.py [--repeats 3] [section.key=value ...]

Each round trains the same config twice in fresh workdirs: once in one process with batch 2B and the
learning rate two replicas get, once as two `python -m pipeline.run` workers with batch B each (global
2B), and reads the chief's `training.json` (images/s of a steady epoch, seconds) and test accuracy.
On one machine the two workers share its cores, so this shows the cost of the collectives, not a speedup.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))
from bench.local_cluster import local_cluster  # noqa: E402

BATCH = 32  # per worker
BASE = ("train.epochs=10", "train.log_images=0", "report.measure_latency=false")


def _result(workdir: Path, wall: float) -> dict:
    manifest = json.loads(next((workdir / "runs").glob("*/manifest.json")).read_text())
    training = json.loads(next((workdir / "cache" / "train").glob("*/training.json")).read_text())
    return {"wall": round(wall, 1), "train_seconds": training["seconds"],
            "images_per_second": training["images_per_second"], "accuracy": manifest["results"]["test_accuracy"]}


def one_process(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline.run", "--workdir", workdir, *BASE, *overrides,
                        f"train.batch_size={2 * BATCH}", f"train.learning_rate={3e-3 * math.sqrt(2)}"],
                       cwd=REPO_DIR, check=True, capture_output=True)
        return _result(Path(workdir), time.perf_counter() - start)


def two_workers(overrides: list[str]) -> dict:
    with local_cluster(2) as worker_envs, tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        processes = [subprocess.Popen(
            [sys.executable, "-m", "pipeline.run", "--workdir", workdir, "train.strategy=multi_worker", *BASE,
             *overrides, f"train.batch_size={BATCH}"], cwd=REPO_DIR, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})
            for env in worker_envs]
        if any(process.wait() for process in processes):
            raise RuntimeError("a worker failed")
        return _result(Path(workdir), time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"one process": [], "two workers": []}
    for _ in range(args.repeats):  # alternating, so drift in the machine's speed hits both alike
        results["one process"].append(one_process(args.overrides))
        results["two workers"].append(two_workers(args.overrides))
    for name, runs in results.items():
        print(json.dumps({"setup": name, "runs": runs,
                          "median_images_per_second": statistics.median(r["images_per_second"] for r in runs),
                          "median_wall": statistics.median(r["wall"] for r in runs)}), flush=True)


if __name__ == "__main__":
    main()
