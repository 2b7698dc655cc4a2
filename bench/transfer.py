"""Benchmark: does a backbone trained on Fashion-MNIST help on 200 digits, at equal training time?

    python bench/transfer.py                      # 3 runs of each start, alternating
    python bench/transfer.py --repeats 1 --seconds 20

A stand-in for ImageNet weights, which this machine cannot download: mobilenet_v3_small is trained
from random weights on 10,000 Fashion-MNIST images resized to 32x32 (`data.image_size="(32, 32)"`,
`train.epochs=5`), and its `backbone` layer's weights are taken out of the export
(`components.model.load_trained`, then `save_weights` to a .weights.h5 file). Then the same network
trains on 200 of scikit-learn's digits as 32x32 RGB PNG files (bench/backbones.py writes them;
`data.max_train_examples=200`), from those weights (`model.weights=FILE`: the new head first, then
fine-tuning) and from random weights (`model.weights=none`), each for the same `train.max_seconds`
(with `train.epochs=1000 train.patience=0`, so the budget alone ends both: equal time),
and is scored on the same 360 test images. `--repeats` runs of each, alternating; the medians and
ranges of the test accuracy are printed. Under a time budget the steps run depend on the machine's
speed, so the accuracies vary a little from run to run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbones import REPO_DIR, run_pipeline, write_digit_pngs  # noqa: E402

sys.path.insert(0, str(REPO_DIR))
FASHION = "idx:/usr/share/datasets/fashion-mnist"
PRETRAIN = ("model.builder=mobilenet_v3_small", "data.image_size=(32, 32)", "data.max_train_examples=10000",
            "train.epochs=5")


def pretrained_backbone(workdir: Path) -> Path:
    """Train mobilenet_v3_small on Fashion-MNIST; save its backbone's weights; returns the .weights.h5 file."""
    results = run_pipeline(workdir, f"data.source={FASHION}", *PRETRAIN, "export.model_name=fashion-mnv3")["results"]
    print(f"pretrained on Fashion-MNIST: test accuracy {results['test_accuracy']:.4f} in "
          f"{results['train_seconds']:.0f} s ({results['epochs_run']} epochs)", flush=True)
    from components.model import all_layers, load_trained

    version_dir = Path(results["version_dir"])
    model = load_trained(version_dir / "network.json", version_dir / "model.weights.h5")
    backbone = next(layer for layer in all_layers(model) if layer.name == "backbone")
    weights_path = workdir / "fashion_backbone.weights.h5"
    backbone.save_weights(weights_path)
    return weights_path


def fine_tune(workdir: Path, images_dir: Path, weights: str, seconds: float) -> float:
    """Test accuracy of mobilenet_v3_small trained on 200 digits from `weights` for `seconds`; prints the run."""
    manifest = run_pipeline(workdir, f"data.source=folder:{images_dir}", "model.builder=mobilenet_v3_small",
                            f"model.weights={weights}", "data.max_train_examples=200",
                            f"train.max_seconds={seconds}", "train.epochs=1000", "train.patience=0")
    results = manifest["results"]
    print(f"model.weights={Path(weights).name}: test accuracy {results['test_accuracy']:.4f}, "
          f"{results['epochs_run']} epochs in {results['train_seconds']:.1f} s, kept epoch {results['best_epoch']}, "
          f"stopped by {results['stopped_by']}", flush=True)
    return results["test_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30, help="train.max_seconds of every run on the digits")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each start, alternating")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        weights_path = pretrained_backbone(Path(tmp) / "fashion")
        images_dir = write_digit_pngs(Path(tmp) / "digits")
        accuracies: dict[str, list[float]] = {"none": [], str(weights_path): []}
        for repeat in range(args.repeats):
            for weights, found in accuracies.items():
                found.append(fine_tune(Path(tmp) / f"{Path(weights).name}-{repeat}", images_dir, weights,
                                       args.seconds))
    for weights, found in accuracies.items():
        print(f"{'from Fashion-MNIST' if weights != 'none' else 'from random':<20} median test accuracy "
              f"{statistics.median(found):.4f} (range {min(found):.4f}-{max(found):.4f}, {len(found)} runs, "
              f"train.max_seconds={args.seconds:g})")


if __name__ == "__main__":
    main()
