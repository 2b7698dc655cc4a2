"""Fashion-MNIST: this pipeline's `fashion` model against the keras-io mnist_convnet recipe.

    python bench/peers.py [--epochs-ours 2] [--epochs-peer 3] [--skip-peer] [section.key=value ...]

Both train in this process on the same 60,000 training images (keras-io's recipe takes all of them,
with 10% held out by `validation_split`; ours takes its 55,000/5,000 split) and are scored on the
10,000 test images. Prints seconds per epoch, total training seconds and test accuracy.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from components.model import build_model  # noqa: E402
from components.sources import read_idx_dir  # noqa: E402
from components.train import make_dataset  # noqa: E402
from pipeline.config import resolve  # noqa: E402


def keras_io_recipe(source, epochs: int) -> tuple[float, float]:
    """https://keras.io/examples/vision/mnist_convnet/ as published: batch 128, Adam, dropout 0.5."""
    x_train = source.train_images.astype("float32") / 255
    x_test = source.test_images.astype("float32") / 255
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
    model.fit(x_train, source.train_labels, batch_size=128, epochs=epochs, validation_split=0.1, verbose=0)
    seconds = time.perf_counter() - start
    return seconds, model.evaluate(x_test, source.test_labels, verbose=0)[1]


def ours(source, epochs: int, overrides: list[str]) -> tuple[float, float]:
    """The `fashion` preset's model, optimizer and input pipeline (with `overrides`), for `epochs` epochs."""
    config = resolve("fashion", [f"train.epochs={epochs}", *overrides])
    keras.utils.set_random_seed(config.train.seed)
    images, labels = source.train_images[:55_000], source.train_labels[:55_000]
    model = build_model(config.model, (28, 28, 1), 10, float(images.mean()), float(images.std()))
    steps = -(-len(labels) // config.train.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(config.train.learning_rate, epochs * steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(make_dataset(images, labels, config.train.batch_size, shuffle_seed=0, epochs=epochs),
              epochs=epochs, steps_per_epoch=steps, shuffle=False, verbose=0)
    seconds = time.perf_counter() - start
    test = make_dataset(source.test_images, source.test_labels, 512)
    return seconds, model.evaluate(test, verbose=0)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs-ours", type=int, default=2)
    parser.add_argument("--epochs-peer", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--skip-peer", action="store_true", help="time only this pipeline's model")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="on top of the fashion preset")
    args = parser.parse_args()
    source = read_idx_dir(args.data)
    runs = [] if args.skip_peer else [("keras-io mnist_convnet", lambda: keras_io_recipe(source, args.epochs_peer),
                                       args.epochs_peer)]
    runs.append(("this pipeline (fashion)", lambda: ours(source, args.epochs_ours, args.overrides), args.epochs_ours))
    for name, fn, epochs in runs:
        seconds, accuracy = fn()
        print(f"{name:<26} {epochs} epochs  {seconds / epochs:5.1f} s/epoch  {seconds:6.1f} s  "
              f"test accuracy {accuracy:.4f}", flush=True)


if __name__ == "__main__":
    main()
