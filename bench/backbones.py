"""Benchmark: the built-in backbones against the built-in CNN, trained from random weights on 32x32 RGB digits.

    python bench/backbones.py                     # cnn, mobilenet_v3_small, efficientnet_v2_b0, resnet50
    python bench/backbones.py --builders cnn mobilenet_v3_small --epochs 2 --repeats 3

scikit-learn's 1,797 digits are written as 32x32 RGB PNG files, one sub-folder per class
(`write_digit_pngs`), and each network trains on them (`data.source=folder:DIR`, `model.weights=none`,
`train.epochs=5`), `--repeats` times (1 by default: a resnet50 run takes minutes here), each run in
a workdir of its own so nothing is cached. From each run: the train stage's fit seconds per epoch and
its steady images/s (the run's results, as training.json has them), the test accuracy, and the
export's sizes (the SavedModel: saved_model.pb and variables/; model.onnx). Then ONNX Runtime's
batch-1 latency of each export, measured as bench/inference.py measures its chosen session
(`onnx_session(path, batch_hint=1)`), in a fresh process, `--rounds` rounds taking turns. Seeds are
the defaults, so the accuracies repeat; the seconds depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import inference  # noqa: E402  (bench/inference.py: its fresh-process ONNX Runtime measurement)

REPO_DIR = Path(__file__).resolve().parents[1]
BUILDERS = ("cnn", "mobilenet_v3_small", "efficientnet_v2_b0", "resnet50")
ONNX_VARIANT = "chosen: onnx_session(path, batch_hint=1)"
LATENCY_CALLS = 500


def write_digit_pngs(folder: Path, size: int = 32) -> Path:
    """scikit-learn's digits as `size`x`size` RGB PNG files in `folder/<class>/<index>.png`; returns `folder`."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        pixels = np.round(image * (255 / 16)).astype(np.uint8)
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).resize((size, size), Image.BILINEAR).convert("RGB").save(
            folder / str(label) / f"{index}.png")
    return folder


def run_pipeline(workdir: Path, *overrides: str) -> dict:
    """Run every stage in `workdir` with `overrides`; returns the run's manifest. It must succeed."""
    command = [sys.executable, "-m", "pipeline.run", "--workdir", str(workdir), *overrides]
    result = subprocess.run(command, cwd=REPO_DIR, capture_output=True, text=True, env=inference.QUIET_ENV)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(sorted((workdir / "runs").glob("*/manifest.json"))[-1].read_text())


def folder_bytes(*paths: Path) -> int:
    return sum(file.stat().st_size for path in paths for file in ([path] if path.is_file() else path.rglob("*"))
               if file.is_file())


def train_one(builder: str, images_dir: Path, workdir: Path, epochs: int) -> dict:
    """Train `builder` on the digit images; what its run measured."""
    results = run_pipeline(workdir, f"data.source=folder:{images_dir}", f"model.builder={builder}",
                           f"train.epochs={epochs}", f"export.model_name={builder.replace('_', '-')}")["results"]
    version_dir = Path(results["version_dir"])
    return {"s_per_epoch": results["train_seconds"] / results["epochs_run"],
            "images_per_s": results["train_images_per_second"], "test_accuracy": results["test_accuracy"],
            "savedmodel_bytes": folder_bytes(version_dir / "saved_model.pb", version_dir / "variables"),
            "onnx_bytes": (version_dir / "model.onnx").stat().st_size, "version_dir": version_dir}


def median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def print_table(trained: dict[str, list[dict]], latency: dict[str, list[float]]) -> None:
    print("| model.builder | s/epoch | images/s | test accuracy | SavedModel | model.onnx | ORT batch-1 p50 |")
    print("|---|---|---|---|---|---|---|")
    for builder, runs in trained.items():
        spread = [run["s_per_epoch"] for run in runs]
        print(f"| {builder} | {median(runs, 's_per_epoch'):.2f} ({min(spread):.2f}–{max(spread):.2f}) "
              f"| {median(runs, 'images_per_s'):,.0f} | {median(runs, 'test_accuracy'):.4f} "
              f"| {median(runs, 'savedmodel_bytes') / 1e6:.1f} MB | {median(runs, 'onnx_bytes') / 1e6:.2f} MB "
              f"| {statistics.median(latency[builder]):,.0f} µs ({min(latency[builder]):,.0f}–"
              f"{max(latency[builder]):,.0f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builders", nargs="+", default=BUILDERS, choices=BUILDERS)
    parser.add_argument("--epochs", type=int, default=5, help="train.epochs of every run")
    parser.add_argument("--repeats", type=int, default=1, help="training runs of each network")
    parser.add_argument("--rounds", type=int, default=3, help="ONNX Runtime latency rounds of each export")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images_dir = write_digit_pngs(Path(tmp) / "digits")
        trained: dict[str, list[dict]] = {builder: [] for builder in args.builders}
        for repeat in range(args.repeats):
            for builder in args.builders:
                trained[builder].append(train_one(builder, images_dir, Path(tmp) / f"{builder}-{repeat}",
                                                  args.epochs))
                print(f"trained {builder} ({repeat + 1}/{args.repeats}): "
                      f"{ {k: v for k, v in trained[builder][-1].items() if k != 'version_dir'} }", flush=True)
        latency: dict[str, list[float]] = {builder: [] for builder in args.builders}
        for _ in range(args.rounds):
            for builder in args.builders:
                result = inference.measure_in_fresh_process("onnx", ONNX_VARIANT, trained[builder][0]["version_dir"],
                                                            LATENCY_CALLS, Path(tmp))
                latency[builder].append(result["p50_us"])
    print_table(trained, latency)


if __name__ == "__main__":
    main()
