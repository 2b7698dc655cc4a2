"""Profiling: the profiled batches are steps in xprof's Overview, read with xprof's own converter."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from xprof.convert import raw_to_tool_data

from components.profiling import StepMarkedTensorBoard

PROFILED = (2, 4)  # executions 2 to 4, as `train.profile_batches` gives them to the callback
NO_STEP_MARKER = "No step marker observed"


def _fit(tensorboard: keras.callbacks.TensorBoard, steps_per_execution: int = 1, epochs: int = 1,
         executions_per_epoch: int = 6) -> None:
    """Fit a tiny CNN on random 8x8 images from a tf.data pipeline, with `tensorboard` as its callback."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.random((64, 8, 8, 1), dtype=np.float32)
    labels = keras.utils.to_categorical(rng.integers(0, 3, 64), 3)
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8).repeat()
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    model.compile("adam", keras.losses.CategoricalCrossentropy(from_logits=True),
                  steps_per_execution=steps_per_execution)
    model.fit(batches, epochs=epochs, steps_per_epoch=executions_per_epoch * steps_per_execution, shuffle=False,
              verbose=0, callbacks=[tensorboard])


def _xspace_paths(log_dir: Path) -> list[str]:
    paths = sorted((log_dir / "train" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(paths) == 1, paths  # one profiling session
    return [str(paths[0])]


def _tool_data(log_dir: Path, tool: str) -> dict | list:
    """What TensorBoard's Profile tab shows as `tool`, converted from the profile by xprof itself."""
    data, _ = raw_to_tool_data.xspace_to_tool_data(_xspace_paths(log_dir), tool, {"use_saved_result": False})
    return json.loads(data)


def _overview(log_dir: Path) -> tuple[dict, list[str]]:
    """The Overview's step-time table (Google DataTable) and its diagnostic messages."""
    tables = _tool_data(log_dir, "overview_page")
    step_table = next(t for t in tables if any(col["id"] == "stepTimeMs" for col in t.get("cols", [])))
    diagnostics = next(t for t in tables if [col["id"] for col in t.get("cols", [])] == ["severity", "message"])
    return step_table, [row["c"][1]["v"] for row in diagnostics["rows"]]


def _steps(step_table: dict) -> list[tuple[str, float]]:
    """(step name, step time in ms) of each step in the Overview's step-time graph."""
    names = [col["id"] for col in step_table["cols"]]
    return [(row["c"][names.index("stepnum")]["v"], row["c"][names.index("stepTimeMs")]["v"])
            for row in step_table["rows"]]


def test_profiled_batches_are_timed_steps_in_the_overview(tmp_path):
    _fit(StepMarkedTensorBoard(str(tmp_path), profile_batch=PROFILED))
    step_table, messages = _overview(tmp_path)
    steps = _steps(step_table)
    # Named by the optimizer steps taken before each profiled batch: 1, 2 and 3.
    assert [name for name, _ in steps] == ["train 1", "train 2", "train 3"]
    assert all(milliseconds > 0 for _, milliseconds in steps), steps
    assert float(step_table["p"]["steptime_ms_average"]) > 0
    assert not [message for message in messages if NO_STEP_MARKER in message]


def test_keras_tensorboard_alone_leaves_the_overview_without_steps(tmp_path):
    """Why StepMarkedTensorBoard exists. If this fails, Keras marks steps itself again: drop the subclass."""
    _fit(keras.callbacks.TensorBoard(log_dir=str(tmp_path), profile_batch=PROFILED))
    step_table, messages = _overview(tmp_path)
    assert _steps(step_table) == [] and step_table["p"]["steptime_ms_average"] == "0.0"
    assert any(NO_STEP_MARKER in message for message in messages), messages


def test_under_steps_per_execution_executions_are_marked_but_xprof_times_no_step(tmp_path, caplog):
    """xprof groups a step by a tf.while_loop's iterations when there is one, and ignores host markers.

    If the Overview shows steps here, xprof has learned to use them: update the class docstring and
    the README, and profile with the usual steps_per_execution.
    """
    _fit(StepMarkedTensorBoard(str(tmp_path), profile_batch=PROFILED), steps_per_execution=4)
    markers = [event for event in _tool_data(tmp_path, "trace_viewer")["traceEvents"] if event.get("name") == "train"]
    assert [event["args"]["step_num"] for event in markers] == ["4", "8", "12"]
    assert all(event["dur"] > 0 for event in markers)
    step_table, _ = _overview(tmp_path)
    assert _steps(step_table) == []
    assert "steps_per_execution=4" in caplog.text


def test_only_the_profiled_batches_make_a_marker_numbered_by_the_global_step(tmp_path, monkeypatch):
    made = []
    real_trace = tf.profiler.experimental.Trace

    def recording_trace(name: str, **kwargs) -> tf.profiler.experimental.Trace:
        if name == "train":
            made.append(kwargs["step_num"])
        return real_trace(name, **kwargs)

    monkeypatch.setattr(tf.profiler.experimental, "Trace", recording_trace)
    # 2 epochs of 3 executions of 2 steps; executions 2 to 5 span the epochs' boundary.
    _fit(StepMarkedTensorBoard(str(tmp_path), profile_batch=(2, 5)), steps_per_execution=2, epochs=2,
         executions_per_epoch=3)
    assert made == [2, 4, 6, 8]


@pytest.mark.parametrize("profile_batch", [0, (7, 9)])
def test_no_marker_when_no_batch_is_profiled(tmp_path, monkeypatch, profile_batch):
    monkeypatch.setattr(tf.profiler.experimental, "Trace", lambda *args, **kwargs: pytest.fail("a marker was made"))
    _fit(StepMarkedTensorBoard(str(tmp_path), profile_batch=profile_batch))
