"""This pipeline against the keras-io mnist_convnet recipe: accuracy per second, measured in one sitting.

    python bench/peers.py [--repeats 3] [--goals fashion,budget,small,recipe] [--peer-epochs 15]

- fashion: the keras-io recipe's 15-epoch fit on Fashion-MNIST, then the whole pipeline
  `python -m pipeline.run --preset fashion` (a fresh workdir each time: nothing cached), wall time
  and test accuracy. Goal: accuracy >= 0.935 and wall time <= 1.8x the peer's fit.
- budget: `--preset fashion train.max_seconds=S` with S a third of the peer's fit. Goal: a higher test
  accuracy than the peer's, training within S (+10 %).
- small: an MNIST-size split (the first 8,000 Fashion-MNIST training images, all 10,000 test
  images): the peer's 15-epoch fit against the default config's train stage on the same file; and
  the default config's test accuracy on digits, the bundled data. Goal: train stage <= the peer's
  fit, digits >= 0.99.
- recipe: each part of the training recipe turned off in turn (augmentation, label smoothing,
  warm-up), on digits and on the 8k split: test accuracy and train-stage seconds.

Pipeline runs go through the real CLI in a subprocess, so what is timed is the real `train()` (and
every other stage); the peer is timed around its `model.fit`, validation included on both sides.
Runs alternate peer, pipeline, peer, pipeline, ... and medians are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")
REPO = Path(__file__).resolve().parents[1]
SMALL_TRAIN = 8_000


def peer_fit(data_path: Path, epochs: int) -> dict:
    """The keras-io recipe as published (batch 128, Adam, dropout 0.5, 10 % validation), in a fresh process."""
    code = f"""
import json, os, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, keras
with np.load({str(data_path)!r}) as data:
    x_train, y_train = data["x_train"].astype("float32") / 255, data["y_train"]
    x_test, y_test = data["x_test"].astype("float32") / 255, data["y_test"]
model = keras.Sequential([
    keras.Input(shape=(28, 28, 1)),
    keras.layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
    keras.layers.MaxPooling2D(pool_size=(2, 2)),
    keras.layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
    keras.layers.MaxPooling2D(pool_size=(2, 2)),
    keras.layers.Flatten(),
    keras.layers.Dropout(0.5),
    keras.layers.Dense(10, activation="softmax"),
])
model.compile(loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
start = time.perf_counter()
model.fit(x_train, y_train, batch_size=128, epochs={epochs}, validation_split=0.1, verbose=0)
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "accuracy": model.evaluate(x_test, y_test, verbose=0)[1]}}))
"""
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def pipeline_run(*arguments: str) -> dict:
    """One uncached `python -m pipeline.run` in a fresh workdir: wall seconds, accuracy, the train record."""
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline.run", "--workdir", workdir, *arguments], cwd=REPO,
                       check=True, capture_output=True)
        wall = time.perf_counter() - start
        manifest = json.loads(next(Path(workdir, "runs").glob("*/manifest.json")).read_text())
    train_stage = next(stage for stage in manifest["stages"] if stage["name"] == "train")
    return {"wall": wall, "accuracy": manifest["results"]["test_accuracy"], "train_stage": train_stage["seconds"],
            **{key: manifest["results"][key] for key in ("train_seconds", "epochs_run", "best_epoch", "stopped_by",
                                                        "train_images_per_second")}}


def write_npz(path: Path, num_train: int | None = None) -> Path:
    """Fashion-MNIST (optionally its first `num_train` training images) as an npz both sides read."""
    sys.path.insert(0, str(REPO))
    from components.sources import read_idx_dir

    source = read_idx_dir(FASHION)
    np.savez(path, x_train=source.train_images[:num_train], y_train=source.train_labels[:num_train],
             x_test=source.test_images, y_test=source.test_labels)
    return path


def median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def report(title: str, runs: list[dict], keys: tuple[str, ...]) -> None:
    print(f"{title}: " + ", ".join(f"{key} median {median(runs, key):.4g} "
                                   f"({', '.join(f'{run[key]:.4g}' for run in runs)})" for key in keys), flush=True)


def goal_fashion(repeats: int, peer_epochs: int, data: Path) -> list[dict]:
    peers, ours = [], []
    for _ in range(repeats):
        peers.append(peer_fit(data, peer_epochs))
        ours.append(pipeline_run("--preset", "fashion"))
    report(f"keras-io mnist_convnet, {peer_epochs}-epoch fit", peers, ("seconds", "accuracy"))
    report("pipeline --preset fashion, whole run", ours, ("wall", "accuracy", "train_stage", "epochs_run",
                                                          "train_images_per_second"))
    print(f"wall / peer fit: {median(ours, 'wall') / median(peers, 'seconds'):.2f} (goal <= 1.8); accuracy "
          f"{median(ours, 'accuracy'):.4f} (goal >= 0.935)", flush=True)
    return peers


def goal_budget(repeats: int, peer_epochs: int, data: Path, peers: list[dict]) -> None:
    peers = peers or [peer_fit(data, peer_epochs) for _ in range(repeats)]
    budget = median(peers, "seconds") / 3
    ours = [pipeline_run("--preset", "fashion", f"train.max_seconds={budget:.1f}") for _ in range(repeats)]
    report(f"pipeline --preset fashion train.max_seconds={budget:.1f}", ours,
           ("accuracy", "train_seconds", "train_stage", "epochs_run"))
    print(f"budget {budget:.1f} s, trained {median(ours, 'train_seconds'):.1f} s "
          f"({median(ours, 'train_seconds') / budget:.2f}x); accuracy {median(ours, 'accuracy'):.4f} against the "
          f"peer's {median(peers, 'accuracy'):.4f}", flush=True)


def goal_small(repeats: int, peer_epochs: int, scratch: Path) -> None:
    small = write_npz(scratch / "fashion_8k.npz", SMALL_TRAIN)
    peers, ours = [], []
    for _ in range(repeats):
        peers.append(peer_fit(small, peer_epochs))
        ours.append(pipeline_run(f"data.source=npz:{small}"))
    report(f"8k split: keras-io {peer_epochs}-epoch fit", peers, ("seconds", "accuracy"))
    report("8k split: default config", ours, ("train_stage", "train_seconds", "epochs_run", "accuracy"))
    print(f"train stage / peer fit: {median(ours, 'train_stage') / median(peers, 'seconds'):.2f} (goal <= 1)",
          flush=True)
    digits = [pipeline_run(f"train.seed={seed}") for seed in (42, 0, 1, 2, 3)[:max(repeats, 1) + 2]]
    report("digits, default config (train.seed 42, 0, 1, ...)", digits, ("accuracy", "train_stage", "epochs_run"))
    print(f"digits default seed: {digits[0]['accuracy']:.4f} (goal >= 0.99)", flush=True)


RECIPE_ABLATIONS = (("the default recipe", ()), ("no augmentation", ("train.augment=none",)),
                    ("no label smoothing", ("train.label_smoothing=0",)), ("no warm-up", ("train.warmup=0",)))


def goal_recipe(repeats: int, scratch: Path) -> None:
    small = scratch / "fashion_8k.npz"
    if not small.exists():
        write_npz(small, SMALL_TRAIN)
    for data_name, data in (("digits", ()), ("8k split", (f"data.source=npz:{small}",))):
        for name, overrides in RECIPE_ABLATIONS:
            runs = [pipeline_run(*data, *overrides) for _ in range(repeats)]
            report(f"recipe, {data_name}, {name}", runs, ("accuracy", "train_stage", "epochs_run"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peer-epochs", type=int, default=15)
    parser.add_argument("--goals", default="fashion,budget,small,recipe")
    args = parser.parse_args()
    goals = args.goals.split(",")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with tempfile.TemporaryDirectory() as scratch:
        data = write_npz(Path(scratch) / "fashion.npz") if {"fashion", "budget"} & set(goals) else None
        peers = goal_fashion(args.repeats, args.peer_epochs, data) if "fashion" in goals else []
        if "budget" in goals:
            goal_budget(args.repeats, args.peer_epochs, data, peers)
        if "small" in goals:
            goal_small(args.repeats, args.peer_epochs, Path(scratch))
        if "recipe" in goals:
            goal_recipe(args.repeats, Path(scratch))


if __name__ == "__main__":
    main()
