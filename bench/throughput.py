"""Training throughput against this machine's float32 matmul peak, and what each speed lever buys.

    python bench/throughput.py [--repeats 3] [--epochs 3] [--levers] [section.key=value ...]

1. Peak: the best median GFLOP/s of float32 matmuls (512..2048 square) in TensorFlow, both cores.
2. Training: the real train stage of `--preset fashion` (through the CLI, `--until train`, a fresh
   workdir, `train.epochs=3` by default) with the given overrides; its `training.json` gives the
   images/s and GFLOP/s of a steady epoch (tracing and validation left out).
3. `--levers`: A/B of the input-pipeline and step levers that are not config keys, one fitted epoch
   each on the fashion model (uint8 vs float32 batches, index gather vs a cached and shuffled
   `from_tensor_slices`, steps_per_execution 1 vs 32), and the config levers (XLA, batch size,
   mixed_bfloat16) through the real train stage.
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def matmul_peak(repeats: int) -> float:
    """Best, over sizes, of the median GFLOP/s of `repeats` timings of 10 float32 matmuls."""
    import tensorflow as tf

    best = 0.0
    for size in (512, 1024, 2048):
        a, b = tf.random.normal((size, size)), tf.random.normal((size, size))
        multiply = tf.function(lambda a, b: tf.matmul(a, b))
        multiply(a, b).numpy()
        rates = []
        for _ in range(max(repeats, 3)):
            start = time.perf_counter()
            for _ in range(10):
                result = multiply(a, b)
            result.numpy()
            rates.append(10 * 2 * size**3 / (time.perf_counter() - start) / 1e9)
        best = max(best, statistics.median(rates))
    return best


def train_stage(overrides: list[str], epochs: int) -> dict:
    """The real train stage of `--preset fashion` with `overrides`; returns its training.json."""
    with tempfile.TemporaryDirectory() as workdir:
        subprocess.run([sys.executable, "-m", "pipeline.run", "--workdir", workdir, "--preset", "fashion",
                        "--until", "train", f"train.epochs={epochs}", "train.patience=0", *overrides],
                       cwd=REPO, check=True, capture_output=True)
        return json.loads(next(Path(workdir, "cache", "train").glob("*/training.json")).read_text())


def lever_epoch(uint8: bool, gather: bool, steps_per_execution: int) -> float:
    """Images/s of one steady epoch of the fashion model with the input pipeline and step levers set."""
    import keras
    import tensorflow as tf

    from components.batches import BatchPlan, training_batches
    from components.model import build_model
    from components.sources import read_idx_dir
    from pipeline.config import resolve

    source = read_idx_dir(Path("/usr/share/datasets/fashion-mnist"))
    images, labels = source.train_images[:55_000], source.train_labels[:55_000]
    config = resolve("fashion")
    keras.utils.set_random_seed(0)
    model = build_model(config.model, (28, 28, 1), 10, float(images.mean()), float(images.std()))
    batch = config.train.batch_size
    if gather:
        dataset = training_batches(images, labels, BatchPlan(10, batch, -(-len(labels) // batch), 0, 2))
    else:  # the input pipeline before this change
        dataset = tf.data.Dataset.range(2).flat_map(lambda _: tf.data.Dataset.from_tensor_slices(
            (images, tf.one_hot(labels, 10))).cache().shuffle(len(labels), seed=0).batch(batch))
    if not uint8:
        dataset = dataset.map(lambda x, y: (tf.cast(x, tf.float32), y))
    model.compile(optimizer="adam", loss="categorical_crossentropy", steps_per_execution=steps_per_execution,
                  jit_compile=False)
    times: list[float] = []
    timer = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: times.append(time.perf_counter()),
                                           on_epoch_end=lambda epoch, logs: times.append(time.perf_counter()))
    model.fit(dataset.prefetch(tf.data.AUTOTUNE), epochs=2, steps_per_epoch=-(-len(labels) // batch), verbose=0,
              callbacks=[timer])
    return len(labels) / (times[3] - times[2])


def in_subprocess(function: str, *arguments) -> float:
    """Run `function(*arguments)` of this script in a fresh process (no state shared between levers)."""
    code = (f"import sys; sys.argv = ['']; import runpy; m = runpy.run_path({__file__!r}); "
            f"print(m[{function!r}]{arguments!r})")
    output = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True)
    return float(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--levers", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args()
    peak = matmul_peak(args.repeats)
    print(f"float32 matmul peak: {peak:.1f} GFLOP/s", flush=True)
    variants = [("fashion preset" + (" " + " ".join(args.overrides) if args.overrides else ""), args.overrides)]
    if args.levers:
        variants += [("train.xla=on", ["train.xla=on", *args.overrides]),
                     ("train.batch_size=256", ["train.batch_size=256", *args.overrides]),
                     ("train.batch_size=64", ["train.batch_size=64", *args.overrides]),
                     ("train.precision=mixed_bfloat16", ["train.precision=mixed_bfloat16", *args.overrides])]
    for name, overrides in variants:
        records = [train_stage(overrides, args.epochs) for _ in range(args.repeats)]
        rate = statistics.median(record["images_per_second"] for record in records)
        flops = statistics.median(record["gflops_per_second"] for record in records)
        print(f"{name:<40} {rate:7.0f} images/s  {flops:6.1f} GFLOP/s  {flops / peak:5.1%} of peak  "
              f"(runs: {', '.join(str(round(record['images_per_second'])) for record in records)})", flush=True)
    if args.levers:
        for name, lever in [("uint8, gather, 32 steps/execution (now)", (True, True, 32)),
                            ("float32 batches", (False, True, 32)),
                            ("cached from_tensor_slices + shuffle", (True, False, 32)),
                            ("1 step/execution", (True, True, 1)),
                            ("before: float32, cache+shuffle, 1 step", (False, False, 1))]:
            rates = [in_subprocess("lever_epoch", *lever) for _ in range(args.repeats)]
            print(f"{name:<40} {statistics.median(rates):7.0f} images/s  (runs: "
                  f"{', '.join(str(round(rate)) for rate in rates)})", flush=True)


if __name__ == "__main__":
    main()
