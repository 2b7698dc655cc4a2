"""How training is planned and ended: the schedule, the epochs sized to the data, the time budget, the
best epoch kept, and the device decisions (XLA, batch scaling, loss scaling)."""

import json
import math

import keras
import numpy as np
import pytest

from components.artifacts import Normalization, SchemaAndStatistics
from components.config import ModelConfig, TrainConfig
from components.train import train
from components.train_plan import plan_training
from components.train_schedule import (
    WARM_START_SHARE,
    EpochTimer,
    HeadFirst,
    KeepBest,
    StepLimit,
    TimeBudget,
    WarmupCosine,
    planned_epochs,
    planned_steps,
)
from tests.conftest import make_images
from tests.test_validate import write_splits

TINY_MODEL = ModelConfig(conv_widths=(4,), dense_units=8, dropout=0.0)


def test_the_schedule_warms_up_linearly_then_follows_a_cosine_to_zero():
    schedule = WarmupCosine(peak=1.0, warmup=0.1, total_steps=100)
    rates = [float(schedule(step)) for step in range(101)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)  # 10 warm-up steps
    assert all(a < b for a, b in zip(rates[:10], rates[1:10]))
    assert rates[10] == pytest.approx(1.0) and rates[55] == pytest.approx(0.5, abs=1e-6)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:])) and rates[100] == pytest.approx(0.0, abs=1e-7)
    schedule.total_steps.assign(200.0)  # a budget that buys more steps moves the end, not the peak
    assert float(schedule(110)) == pytest.approx(0.5 * (1 + math.cos(math.pi * 90 / 180)), abs=1e-6)


@pytest.mark.parametrize("epochs, examples, expected", [
    (7, 100, 7),  # asked for: kept
    (0, 1_293, 46),  # digits: small data needs many passes
    (0, 7_200, 11),  # an 8,000-image split less validation: 80,000 images seen
    (0, 55_000, 6), (0, 10, 46),  # bounds
])
def test_epochs_sized_to_the_data(epochs, examples, expected):
    assert planned_epochs(epochs, examples) == expected


class _Model:
    """What the callbacks touch of a model: weights, the optimizer's step count, stop_training."""

    def __init__(self):
        self.weights = [np.zeros(2)]
        self.stop_training = False
        self.optimizer = type("Optimizer", (), {"iterations": 0})()

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        self.weights = [w.copy() for w in weights]


def test_keep_best_keeps_the_lowest_validation_loss_and_stops_after_patience():
    model, keep = _Model(), KeepBest(patience=2)
    keep.set_model(model)
    for epoch, loss in enumerate([0.9, 0.5, 0.6, 0.55, 0.7]):
        model.weights = [np.full(2, float(epoch))]
        keep.on_epoch_end(epoch, {"val_loss": loss, "val_accuracy": 0.5})
        if model.stop_training:
            break
    assert keep.best_epoch == 1 and epoch == 3 and keep.stopped  # epochs 2 and 3 were no better
    keep.restore(model)
    np.testing.assert_array_equal(model.weights[0], [1.0, 1.0])
    again = KeepBest(patience=2)
    again.set_model(_Model())
    again.load_state(keep.state())  # what the epoch checkpoint carries over a kill
    assert (again.best_epoch, again.best_score, again.stopped) == (1, -0.5, True)
    np.testing.assert_array_equal(again.best_weights[0], [1.0, 1.0])


def test_early_stopping_waits_for_phase_two_and_counts_its_patience_from_there():
    model, keep = _Model(), KeepBest(patience=2)
    body = keras.layers.Dense(2)
    body.build((None, 3))
    schedule = WarmupCosine(1.0, 0.1, total_steps=100)
    head_first = HeadFirst([body], head_share=0.5, unfreeze_share=1.0, schedule=schedule, keep_best=keep)
    for callback in (keep, head_first):
        callback.set_model(model)
    for epoch, loss in enumerate([0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2]):  # never better than epoch 0
        model.optimizer.iterations = 10 * epoch
        head_first.on_epoch_begin(epoch)
        keep.on_epoch_end(epoch, {"val_loss": loss})
        if model.stop_training:
            break
    assert head_first.fine_tune_epoch == 5  # the first epoch to begin at step 50 or later
    assert epoch == 7 and keep.stopped  # 2 epochs of phase two without a better one; none stopped phase one
    assert body.trainable


def test_patience_zero_never_stops():
    model, keep = _Model(), KeepBest(patience=0)
    keep.set_model(model)
    for epoch in range(30):
        keep.on_epoch_end(epoch, {"val_loss": 1.0 + epoch, "val_accuracy": 0.1})
    assert not model.stop_training and keep.best_epoch == 0


def test_the_budget_plans_the_schedule_for_the_steps_the_time_buys():
    clock = [0.0]
    model, schedule = _Model(), WarmupCosine(1.0, 0.1, 10_000)
    budget = TimeBudget(seconds=10.0, schedule=schedule, most_steps=10_000, clock=lambda: clock[0])
    budget.set_model(model)
    budget.on_train_begin()
    clock[0], model.optimizer.iterations = 2.0, 10  # the first execution: tracing, not a rate
    budget.on_train_batch_end(0)
    assert float(schedule.total_steps) == 10_000
    clock[0], model.optimizer.iterations = 3.0, 110  # 100 steps per second from here on
    budget.on_train_batch_end(1)
    assert float(schedule.total_steps) == pytest.approx(110 + 7 * 100)  # 7 s left
    budget.on_test_begin()
    clock[0] = 4.0  # a validation pass takes 1 s: kept in reserve for the last one
    budget.on_test_end()
    clock[0], model.optimizer.iterations = 5.0, 310
    budget.on_train_batch_end(2)
    assert float(schedule.total_steps) == pytest.approx(310 + (10 - 5 - 1) * 100) and not model.stop_training
    clock[0], model.optimizer.iterations = 9.0, 710
    budget.on_train_batch_end(3)
    assert model.stop_training and budget.stopped  # nothing left but the last validation


def test_the_budget_measures_the_speed_anew_when_more_weights_train():
    clock = [0.0]
    model, schedule = _Model(), WarmupCosine(1.0, 0.1, 10_000)
    model.trainable_weights = [0] * 2  # phase one: the head
    budget = TimeBudget(seconds=100.0, schedule=schedule, most_steps=10_000, clock=lambda: clock[0])
    budget.set_model(model)
    budget.on_train_begin()
    for clock[0], model.optimizer.iterations in ((1.0, 10), (2.0, 1010)):  # 1,000 steps a second
        budget.on_train_batch_end(0)
    assert float(schedule.total_steps) == 10_000  # 98 s buy more than the most steps
    model.trainable_weights = [0] * 20  # phase two: the body too, 10 steps a second
    budget.on_epoch_begin(1)
    clock[0], model.optimizer.iterations = 3.0, 1020  # its first execution traces the step again: no rate
    budget.on_train_batch_end(1)
    clock[0], model.optimizer.iterations = 4.0, 1030
    budget.on_train_batch_end(2)
    assert float(schedule.total_steps) == pytest.approx(1030 + 96 * 10)  # by phase two's speed alone


def _tiny_data(tmp_path):
    (tmp_path / "data").mkdir(exist_ok=True)
    splits = write_splits(tmp_path / "data", make_images(12), val=make_images(4, seed=1))
    return (splits, SchemaAndStatistics(tmp_path / "s.json", tmp_path / "st.json", (6, 6, 1), 3),
            Normalization(tmp_path / "n.json", 60.0, 70.0))


def test_a_time_budget_ends_training_within_it_and_keeps_the_best_epoch(tmp_path, monkeypatch):
    from components import train as train_module

    budgets = []

    def budget_on_a_step_clock(seconds, schedule, most_steps):
        """A budget whose clock reads 0.25 s per training step done: a machine of known, steady speed."""
        budget = TimeBudget(seconds, schedule, most_steps,
                            clock=lambda: 0.25 * float(budget.model.optimizer.iterations.numpy()))
        budgets.append(budget)
        return budget

    monkeypatch.setattr(train_module, "TimeBudget", budget_on_a_step_clock)
    config = TrainConfig(epochs=100_000, batch_size=4, max_seconds=9.0, patience=0, log_images=0, precision="float32")
    trained = train(config, TINY_MODEL, *_tiny_data(tmp_path), plan_training(config), tmp_path / "out",
                    tmp_path / "tb")
    record = json.loads(trained.training_path.read_text())
    history = json.loads(trained.history_path.read_text())
    # 9 s buy 36 steps of 0.25 s, the first execution's (tracing) included: 4 epochs of 36 images in batches of 4.
    assert record["stopped_by"] == "time budget" and record["epochs_run"] == 4 == len(history["val_loss"])
    assert budgets[0].spent() == 9.0 and float(budgets[0].schedule.total_steps) == 36
    assert record["best_epoch"] == int(np.argmin(history["val_loss"])) + 1


def test_the_saved_model_has_the_best_epochs_weights_and_a_float32_softmax(tmp_path):
    config = TrainConfig(epochs=8, batch_size=4, learning_rate=0.05, patience=0, log_images=0, precision="float32")
    splits, schema, normalization = _tiny_data(tmp_path)
    trained = train(config, TINY_MODEL, splits, schema, normalization, plan_training(config), tmp_path / "out",
                    tmp_path / "tb")
    record = json.loads(trained.training_path.read_text())
    history = json.loads(trained.history_path.read_text())
    assert record["best_epoch"] == int(np.argmin(history["val_loss"])) + 1 and record["epochs_run"] == 8
    model = keras.models.load_model(trained.model_path)
    assert model.layers[-1].name == "probabilities" and model.output.dtype == "float32"
    images, labels = make_images(4, seed=1)
    probabilities = model.predict(images.astype("float32"), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # The kept weights score the validation loss recorded for the best epoch (label smoothing included).
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)(
        keras.utils.to_categorical(labels, 3), probabilities)
    assert float(loss) == pytest.approx(min(history["val_loss"]), rel=1e-4)


def test_mixed_float16_trains_with_loss_scaling(tmp_path, monkeypatch):
    from components import train as train_module

    seen = {}
    original = train_module._compile_trainee

    def spy(*args, **kwargs):
        trainee = original(*args, **kwargs)
        seen["optimizer"] = type(trainee.optimizer).__name__
        return trainee

    monkeypatch.setattr(train_module, "_compile_trainee", spy)
    config = TrainConfig(epochs=1, batch_size=4, precision="mixed_float16", log_images=0)
    train(config, TINY_MODEL, *_tiny_data(tmp_path), plan_training(config), tmp_path / "out", tmp_path / "tb")
    assert seen["optimizer"] == "LossScaleOptimizer"


def test_under_mixed_float16_the_step_scales_the_loss_and_applies_the_unscaled_gradients():
    """One step of the loop with plain SGD, whose update is the learning rate times the gradient it is given: the
    update must be that of the gradients of the loss itself. Were the loss not scaled, Keras's LossScaleOptimizer
    would still divide the gradients by its scale (2**15) and the step would be that much too small."""
    import tensorflow as tf

    from components.train_loop import LoopSettings, TrainingLoop

    rng = np.random.default_rng(0)
    features = rng.normal(size=(8, 6)).astype(np.float32)
    labels = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 8)]
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        with tf.GradientTape() as tape:
            loss = keras.losses.CategoricalCrossentropy(from_logits=True)(labels, model(features, training=True))
        gradients = [gradient.numpy() for gradient in tape.gradient(loss, model.trainable_variables)]
        before = model.get_weights()
        loop = TrainingLoop(model, tf.distribute.get_strategy(), LoopSettings(8, 1, 1, 3, 0.0, jit_compile=False))
        assert type(model.optimizer).__name__ == "LossScaleOptimizer" and float(model.optimizer.dynamic_scale) == 2**15
        history = loop.fit(lambda context: tf.data.Dataset.from_tensors((features, labels)).repeat(),
                           tf.data.Dataset.from_tensors((features, labels)), 1, 0, [])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for old, new, gradient in zip(before, model.get_weights(), gradients, strict=True):
        np.testing.assert_allclose((old - new) / 0.1, gradient, atol=1e-3 * np.abs(gradient).max())
    assert history["loss"] == [pytest.approx(float(loss), rel=1e-3)]  # the loss itself, not the scaled one


def test_a_model_fits_batches_prefetched_to_a_device():
    """The prefetch-to-device path, run on the CPU device (the only one here): Keras takes its batches."""
    import tensorflow as tf

    from components.batches import BatchPlan, training_batches

    images, labels = make_images(8)
    batches = training_batches(images, labels, BatchPlan(3, 4, 6, seed=0, epochs=2), device="/CPU:0")
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    model.compile("adam", keras.losses.CategoricalCrossentropy(from_logits=True))
    history = model.fit(batches, epochs=2, steps_per_epoch=6, verbose=0)
    assert len(history.history["loss"]) == 2
    assert next(iter(batches))[0].device.endswith("CPU:0") and next(iter(batches))[0].dtype == tf.uint8


def test_steady_epochs_leave_out_the_epochs_that_trace_the_step():
    timer = EpochTimer()
    timer.seconds = {3: 9.0, 4: 1.0, 5: 8.0, 6: 1.2, 7: 1.1}  # resumed at epoch 3; phase two began at epoch 5
    assert timer.steady_seconds(retraced=(5,)) == 1.1  # the median of 1.0, 1.2, 1.1
    assert timer.steady_seconds() == 1.2  # with the retracing epoch: 1.0, 8.0, 1.2, 1.1
    assert EpochTimer().steady_seconds() is None


def test_phase_two_scales_the_rate_down_and_warms_it_up_again():
    schedule = WarmupCosine(peak=1.0, warmup=0.1, total_steps=1000, fine_tune_scale=0.1)
    plain = WarmupCosine(peak=1.0, warmup=0.1, total_steps=1000)
    rate = lambda step: float(schedule(step))  # noqa: E731
    assert rate(500) == pytest.approx(float(plain(500)))  # no phase two yet
    schedule.fine_tune_from.assign(400.0)
    assert rate(399) == pytest.approx(float(plain(399)))  # before it began
    assert rate(400) == pytest.approx(float(plain(400)) * 0.1 / 100)  # warmed up again over 100 steps
    assert rate(449) == pytest.approx(float(plain(449)) * 0.1 * 50 / 100)
    assert rate(600) == pytest.approx(float(plain(600)) * 0.1)


def test_a_warm_start_with_every_layer_is_planned_a_share_of_the_steps():
    assert planned_steps(0, 54_000, 844) == 6 * 844
    assert planned_steps(0, 54_000, 844, warm=True) == math.floor(WARM_START_SHARE * 6 * 844)  # inside epoch 3
    assert planned_steps(0, 1_437, 23, warm=True) == math.floor(WARM_START_SHARE * 46 * 23)  # 46: the cap
    assert planned_steps(5, 100, 2, warm=True) == 10  # train.epochs as asked


def test_training_stops_at_the_planned_step_inside_an_epoch():
    class Model:
        stop_training = False
        optimizer = type("Optimizer", (), {"iterations": keras.Variable(0, dtype="int64")})()

    model, limit = Model(), StepLimit(25)
    limit.set_model(model)
    for step in (10, 20, 24):
        model.optimizer.iterations.assign(step)
        limit.on_train_batch_end(0)
        assert not model.stop_training
    model.optimizer.iterations.assign(25)
    limit.on_train_batch_end(0)
    assert model.stop_training
