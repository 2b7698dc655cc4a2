"""The training loop: what Keras's fit would do on one device, the same on several, callbacks as fit calls them."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import confusion_matrix

from components.train_loop import LoopSettings, TrainingLoop
from components.train_tensorboard import LearningRateLog
from tests.conftest import REPO_DIR, run_python

NUM_CLASSES, BATCH = 4, 16


def _data(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, num)
    features = rng.normal(size=(num, 6)).astype(np.float32)
    features[np.arange(num), labels] += 1.5  # learnable, not perfectly
    return features, np.eye(NUM_CLASSES, dtype=np.float32)[labels]


def _model(learning_rate=0.05) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(NUM_CLASSES)])
    return model, keras.optimizers.Adam(learning_rate)


def _batches(features, labels, epochs):
    return tf.data.Dataset.from_tensor_slices((features, labels)).batch(BATCH, drop_remainder=True).repeat(epochs)


def _loop(model, optimizer, steps, execution=3, smoothing=0.1) -> TrainingLoop:
    model.compile(optimizer=optimizer, steps_per_execution=execution)
    return TrainingLoop(model, tf.distribute.get_strategy(),
                        LoopSettings(BATCH, steps, execution, NUM_CLASSES, smoothing, jit_compile=False))


def test_on_one_device_the_loop_trains_exactly_as_keras_fit():
    train, val = _data(288, 1), _data(90, 2)
    steps = 288 // BATCH  # 18: executions of 3 steps
    model, optimizer = _model()
    model.compile(optimizer=optimizer, loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
                  metrics=["accuracy"], steps_per_execution=3)
    fitted = model.fit(_batches(*train, 3), epochs=3, steps_per_epoch=steps, shuffle=False, verbose=0,
                       validation_data=tf.data.Dataset.from_tensor_slices(val).batch(BATCH)).history
    looped_model, looped_optimizer = _model()
    looped = _loop(looped_model, looped_optimizer, steps).fit(
        lambda context: _batches(*train, 3), tf.data.Dataset.from_tensor_slices(val).batch(BATCH), 3, 0, [])
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(looped[key], fitted[key], rtol=1e-5, err_msg=key)
    for ours, theirs in zip(looped_model.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert int(looped_optimizer.iterations) == 3 * steps


def test_validation_gives_the_models_loss_accuracy_and_confusion_matrix():
    train, val = _data(160, 1), _data(90, 2)
    model, optimizer = _model()
    loop = _loop(model, optimizer, 10, execution=5, smoothing=0.2)
    snapshots = []

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logits = self.model.predict(val[0], verbose=0)
            loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2)(val[1], logits)
            expected = confusion_matrix(val[1].argmax(1), logits.argmax(1), labels=list(range(NUM_CLASSES)))
            snapshots.append((loop.confusion.copy(), expected, logs["val_loss"], float(loss), logs["val_accuracy"],
                              float(np.mean(logits.argmax(1) == val[1].argmax(1)))))

    loop.fit(lambda context: _batches(*train, 3), tf.data.Dataset.from_tensor_slices(val).batch(7), 3, 0, [Snapshot()])
    for matrix, expected, val_loss, loss, val_accuracy, accuracy in snapshots:
        np.testing.assert_array_equal(matrix, expected)
        assert val_loss == pytest.approx(loss, rel=1e-5) and val_accuracy == pytest.approx(accuracy)
    assert len({matrix.tobytes() for matrix, *_ in snapshots}) > 1  # it follows training


def test_callbacks_see_fits_hooks_in_order_and_their_additions_reach_the_history():
    train, val = _data(96, 1), _data(30, 2)
    model, _ = _model()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    loop = _loop(model, keras.optimizers.SGD(schedule), 6, execution=2)
    calls = []

    class Recorder(keras.callbacks.Callback):
        def __getattribute__(self, name):
            if name.startswith("on_") and not name.startswith("on_batch") and name != "on_test_batch_end":
                calls.append(name)
            return super().__getattribute__(name)

    history = loop.fit(lambda context: _batches(*train, 2), tf.data.Dataset.from_tensor_slices(val).batch(8), 2, 0,
                       [LearningRateLog(), Recorder()])
    # Six steps an epoch: the rate after steps 6 and 12.
    assert history["learning_rate"] == pytest.approx([0.1 * 0.5 ** 6, 0.1 * 0.5 ** 12])
    epoch = ["on_epoch_begin"] + ["on_train_batch_begin", "on_train_batch_end"] * 3 + \
        ["on_test_begin", "on_test_end", "on_epoch_end"]
    assert calls == ["on_train_begin"] + epoch * 2 + ["on_train_end"]


def test_a_callback_that_stops_training_ends_the_epoch_after_its_validation():
    train, val = _data(160, 1), _data(30, 2)
    model, optimizer = _model()
    loop = _loop(model, optimizer, 10, execution=2)

    class StopInSecondEpoch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations) == 14:
                self.model.stop_training = True

    history = loop.fit(lambda context: _batches(*train, 5), tf.data.Dataset.from_tensor_slices(val).batch(8), 5, 0,
                       [StopInSecondEpoch()])
    assert len(history["val_loss"]) == 2 and int(optimizer.iterations) == 14


# Two logical CPUs in a fresh process (they must be set before TensorFlow starts): the project's model,
# trained by the loop on one device and mirrored on two, with the same global batch.
MIRRORED = """
import json, sys
import numpy as np, tensorflow as tf, keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from sklearn.datasets import load_digits
from components.batches import BatchPlan, evaluation_batches, training_batches
from components.config import ModelConfig
from components.train_loop import LoopSettings, TrainingLoop
from components.model import build_model, logits_of

CONFIG = ModelConfig(**{key: tuple(value) if isinstance(value, list) else value
                        for key, value in json.loads(sys.argv[1]).items()})
digits = load_digits()
images, labels = (digits.images[..., None] * 16).astype(np.uint8), digits.target
GLOBAL, STEPS = 64, 1400 // 64

def train(strategy, synchronized):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = build_model(CONFIG, (8, 8, 1), 10, 70.0, 90.0, synchronized_batch_norm=synchronized)
        trainee = keras.Model(model.input, logits_of(model))
        trainee.compile(optimizer=keras.optimizers.Adam(1e-2), steps_per_execution=7)
    replicas = strategy.num_replicas_in_sync
    def dataset_fn(context):  # no augmentation: its seeds go by batch, and a replica's batch is half a step's
        plan = BatchPlan(10, context.get_per_replica_batch_size(GLOBAL), STEPS * replicas, 0, 3)
        return training_batches(images[:1400], labels[:1400], plan)
    loop = TrainingLoop(trainee, strategy, LoopSettings(GLOBAL, STEPS, 7, 10, 0.1, False))
    history = loop.fit(dataset_fn, evaluation_batches(images[1400:], labels[1400:], 10, 64), 3, 0, [])
    return history, [np.asarray(weight).tolist() for weight in model.get_weights()]

one, one_weights = train(tf.distribute.get_strategy(), False)
two, two_weights = train(tf.distribute.MirroredStrategy(["/CPU:0", "/CPU:1"]), True)
print(json.dumps({"one": one, "two": two, "one_weights": one_weights, "two_weights": two_weights}))
"""


@pytest.mark.slow
def test_mirrored_on_two_devices_trains_as_one_device_with_the_same_global_batch():
    result = run_python(MIRRORED, json.dumps({"conv_widths": [8], "dropout": 0.0}))
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(found["two"][key], found["one"][key], rtol=2e-3, err_msg=key)
    for ours, theirs in zip(found["two_weights"], found["one_weights"], strict=True):
        np.testing.assert_allclose(ours, theirs, atol=2e-3)  # moving averages included: synchronized batch norm


@pytest.mark.slow
def test_a_users_network_mirrored_on_two_devices_has_its_batch_norms_synchronized():
    """A ResNet's five batch norms: the first epoch matches one device within 1e-3 only when synchronized.

    Measured: synchronized 4.6e-4 off in the first epoch's loss, unsynchronized 2.1e-3; after that,
    summation order alone makes the two drift apart (lr 1e-2), so later epochs are only checked to learn.
    """
    network = {"builder": f"{REPO_DIR}/examples/networks.py:small_resnet", "options": {"width": 4}}
    result = run_python(MIRRORED, json.dumps(network))
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(found["two"]["loss"][0], found["one"]["loss"][0], rtol=1e-3)
    assert found["two"]["loss"][-1] < found["two"]["loss"][0] - 0.3
