"""What training shows: the learning rate in the history (the confusion matrix: tests/test_train_loop.py)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from components.train_tensorboard import LearningRateLog


def test_learning_rate_log_puts_the_current_rate_in_the_history():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
    features = np.zeros((8, 6), np.float32)
    history = model.fit(features, np.zeros((8, 2), np.float32), batch_size=4, epochs=3, verbose=0,
                        callbacks=[LearningRateLog()])
    # Two steps an epoch: the rate after steps 2, 4 and 6.
    assert history.history["learning_rate"] == pytest.approx([0.1 * 0.5 ** 2, 0.1 * 0.5 ** 4, 0.1 * 0.5 ** 6])
