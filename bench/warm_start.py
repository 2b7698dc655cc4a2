"""Benchmark: a warm start (`model.init`) against training from scratch, on Fashion-MNIST.

    python bench/warm_start.py                # the parent once, then from scratch and warm, 3 times each
    python bench/warm_start.py --repeats 1 --warm-epochs 0 3   # warm starts of 2 (planned) and 3 epochs

Issue 19's measurement. (a) A parent is trained and exported on 27,000 of Fashion-MNIST's training
images (`data.max_train_examples=27000`; the default CNN and epochs). Then, on all of them (54,000
after the validation split), (b) a run from scratch and (c) a warm start from (a)'s export
(`model.init`, same classes, so every layer is reused and `train.epochs=0` plans WARM_START_SHARE of
the epochs; `--warm-epochs N` sets `train.epochs=N` instead) alternate, `--repeats` times. Every run
has a workdir of its own, so no stage is cached from another run; the train stage's seconds (from
the run's manifest) and the test accuracy (from its results) are compared. The requirement: the warm
start's median test accuracy within 0.2 points of the from-scratch median, in at most half its median
train seconds. Seeds are the defaults, so the accuracies repeat; the seconds depend on the machine's
load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
FASHION = "idx:/usr/share/datasets/fashion-mnist"
PARENT_EXAMPLES = 27_000  # half of the 54,000 training images left after the validation split
MAX_ACCURACY_DROP, MAX_TIME_RATIO = 0.002, 0.5  # the requirement: 0.2 points, half the train time


@dataclass(frozen=True)
class Run:
    """What one pipeline run measured."""

    train_seconds: float  # the train stage in the manifest (building, the parent's weights, fitting, saving)
    fit_seconds: float  # the fit alone (training.json's seconds)
    epochs: int
    test_accuracy: float
    version_dir: Path


def run_pipeline(workdir: Path, *overrides: str) -> Run:
    """Run every stage on Fashion-MNIST in `workdir` with `overrides`; it must succeed."""
    command = [sys.executable, "-m", "pipeline.run", "--workdir", str(workdir), f"data.source={FASHION}",
               *overrides]
    result = subprocess.run(command, cwd=REPO_DIR, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed (exit {result.returncode}):\n{result.stderr}")
    manifest = json.loads(sorted((workdir / "runs").glob("*/manifest.json"))[-1].read_text())
    (train,) = [stage for stage in manifest["stages"] if stage["name"] == "train"]
    if train["status"] != "succeeded":
        sys.exit(f"the train stage in {workdir} was {train['status']}, not run")
    results = manifest["results"]
    return Run(train["seconds"], results["train_seconds"], results["epochs_run"], results["test_accuracy"],
               Path(results["version_dir"]))


def describe(name: str, run: Run) -> str:
    return (f"{name:<14}{run.epochs:>7}{run.train_seconds:>14.1f}{run.fit_seconds:>12.1f}"
            f"{run.test_accuracy:>16.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs from scratch and warm, alternating")
    parser.add_argument("--warm-epochs", type=int, nargs="+", default=[0],
                        help="train.epochs of the warm starts, one run of each per repeat; 0 = planned (default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        parent = run_pipeline(workdir / "parent", f"data.max_train_examples={PARENT_EXAMPLES}",
                              "export.model_name=parent")
        print(f"{'run':<14}{'epochs':>7}{'train stage s':>14}{'fit s':>12}{'test accuracy':>16}")
        print(describe("parent (27k)", parent))
        scratch, warm = [], {epochs: [] for epochs in args.warm_epochs}
        for repeat in range(1, args.repeats + 1):
            scratch.append(run_pipeline(workdir / f"scratch-{repeat}"))
            print(describe(f"scratch {repeat}", scratch[-1]), flush=True)
            for epochs, runs in warm.items():
                runs.append(run_pipeline(workdir / f"warm-{epochs}-{repeat}", f"model.init={parent.version_dir}",
                                         f"train.epochs={epochs}"))
                print(describe(f"warm {epochs or ''} {repeat}", runs[-1]), flush=True)
    for epochs, runs in warm.items():
        print(f"warm starts with train.epochs={epochs}:")
        report(scratch, runs)


def report(scratch: list[Run], warm: list[Run]) -> None:
    """Medians, spreads and whether the requirement holds."""
    def median(runs: list[Run], field: str) -> float:
        return statistics.median(getattr(run, field) for run in runs)

    def spread(runs: list[Run], field: str) -> str:
        values = [getattr(run, field) for run in runs]
        return f"{min(values):.1f}-{max(values):.1f}"

    for name, runs in (("scratch", scratch), ("warm", warm)):
        print(f"median {name:<8} train stage {median(runs, 'train_seconds'):.1f} s "
              f"(range {spread(runs, 'train_seconds')}), test accuracy {median(runs, 'test_accuracy'):.4f}")
    drop = median(scratch, "test_accuracy") - median(warm, "test_accuracy")
    ratio = median(warm, "train_seconds") / median(scratch, "train_seconds")
    held = drop <= MAX_ACCURACY_DROP and ratio <= MAX_TIME_RATIO
    print(f"warm start: {100 * drop:+.2f} points below scratch (at most {100 * MAX_ACCURACY_DROP:.1f}), "
          f"{ratio:.2f}x its train time (at most {MAX_TIME_RATIO}): requirement {'met' if held else 'not met'}")


if __name__ == "__main__":
    main()
