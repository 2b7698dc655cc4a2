"""The runner end to end on `smoke`, and its exports loaded by consumers in fresh processes."""

import contextlib
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import resolve, to_dict
from pipeline.registry import STAGE_NAMES
from tests.conftest import (
    OFF_BY_DEFAULT,
    QUIET_ENV,
    REPO_DIR,
    SMOKE_OVERRIDES,
    read_split,
    run_pipeline_cli,
    run_python,
)

STAGES = list(STAGE_NAMES)


def test_every_stage_succeeds_and_the_manifest_says_so(smoke_run):
    manifest = smoke_run.manifest
    assert manifest["status"] == "succeeded"
    assert [s["name"] for s in manifest["stages"]] == STAGES
    assert {s["name"]: (s["status"], s.get("reason")) for s in manifest["stages"]} == {
        name: ("skipped", OFF_BY_DEFAULT[name]) if name in OFF_BY_DEFAULT else ("succeeded", None) for name in STAGES}
    seconds = {s["name"]: s["seconds"] for s in manifest["stages"]}
    # Each stage is timed; how long each takes is for bench/ to measure, not for a test to assert.
    assert all(isinstance(value, float) and value >= 0 for value in seconds.values()) and seconds["train"] > 0
    assert manifest["run_id"] == smoke_run.run_dir.name and manifest["error"] is None
    assert manifest["results"]["test_accuracy"] > 0.75  # 3 epochs on digits: 0.82 here; chance is 0.1
    assert manifest["results"]["data_fingerprint"] == manifest["artifacts"]["ingest"]["fingerprint"]
    assert manifest["results"]["version_dir"].endswith("saved_models/digits/1")  # named after its data


def test_config_json_is_the_resolved_config(smoke_run):
    written = json.loads((smoke_run.run_dir / "config.json").read_text())
    expected = json.loads(json.dumps(to_dict(resolve("smoke", list(SMOKE_OVERRIDES)))))
    assert written == expected


def test_summary_table_lists_stages_accuracy_and_exports(smoke_run):
    lines = smoke_run.stdout.splitlines()
    for stage in STAGES:
        status = "skipped" if stage in OFF_BY_DEFAULT else "succeeded"
        assert any(line.split()[:2] == [stage, status] for line in lines if line.strip()), stage
    assert f"test accuracy {smoke_run.manifest['results']['test_accuracy']:.4f}" in smoke_run.stdout
    assert "saved_models/digits/1/model.onnx" in smoke_run.stdout
    assert "data         train 1293 / val 144 / test 360, 8x8x1, 10 classes, 0 warnings" in smoke_run.stdout
    assert "Traceback" not in smoke_run.stderr and "oneDNN" not in smoke_run.stderr


def test_version_folder_is_complete_and_nothing_half_written_remains(smoke_run):
    model_dir = smoke_run.workdir / "saved_models" / "digits"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1"]
    version_dir = model_dir / "1"
    for name in ("saved_model.pb", "variables", "model.onnx", "labels.txt", "metadata.json"):
        assert (version_dir / name).exists(), name
    assert (version_dir / "labels.txt").read_text().split() == [str(i) for i in range(10)]
    metadata = json.loads((version_dir / "metadata.json").read_text())
    assert metadata["run_id"] == smoke_run.manifest["run_id"]
    assert metadata["data_fingerprint"] == smoke_run.manifest["results"]["data_fingerprint"]
    assert metadata["metrics"]["test_accuracy"] == smoke_run.manifest["results"]["test_accuracy"]
    assert metadata["input"]["shape"] == [None, 8, 8, 1]


def test_exports_are_readable_by_other_users(smoke_run):
    version_dir = smoke_run.workdir / "saved_models" / "digits" / "1"
    modes = {path: path.stat().st_mode & 0o777 for path in [version_dir, *version_dir.rglob("*")]}
    assert {oct(mode) for path, mode in modes.items() if path.is_dir()} == {"0o755"}
    assert {oct(mode) for path, mode in modes.items() if path.is_file()} == {"0o644"}


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0}).Reload()


def _png_steps(events, tag: str) -> list[int]:
    """Steps of an image summary whose every value is a PNG (width, height, encoded image)."""
    steps = []
    for event in events.Tensors(tag):
        width, height, png = event.tensor_proto.string_val
        assert png.startswith(b"\x89PNG") and int(width) > 50 and int(height) > 50
        steps.append(event.step)
    return steps


def test_tensorboard_runs_are_named_by_model_and_run_id(smoke_run):
    run_dir = smoke_run.run_dir
    tensorboard_dir = smoke_run.workdir / "tensorboard" / "digits" / run_dir.name
    assert (run_dir / "tensorboard").resolve() == tensorboard_dir.resolve()
    assert sorted(p.name for p in tensorboard_dir.iterdir() if p.is_dir()) == ["images", "test", "train", "validation"]


# The smoke run's plan: 1,293 training images in batches of 32 are 40 steps an epoch, 120 in 3 epochs; the
# learning rate warms up over 5 % of them (6 steps) to 3e-3, then falls along a cosine to 0 at step 120.
# At the end of epochs 1, 2 and 3 (steps 40, 80, 120) it is 1.5e-3 * (1 + cos(pi * (step - 6) / 114)).
SMOKE_LEARNING_RATES = [2.38835e-3, 8.22700e-4, 0.0]


def test_training_follows_the_planned_learning_rates_and_learns(smoke_run):
    history = json.loads((smoke_run.run_dir / "train" / "history.json").read_text())
    assert history["learning_rate"] == pytest.approx(SMOKE_LEARNING_RATES, rel=1e-4, abs=1e-9)
    # Frozen weights would score about the same loss every epoch (only batch norm's statistics move).
    assert history["loss"][0] > history["loss"][1] > history["loss"][2] < 0.8 * history["loss"][0]
    assert history["val_loss"][0] > history["val_loss"][-1]


def test_tensorboard_has_scalars_learning_rate_images_and_a_profile(smoke_run):
    tensorboard_dir = smoke_run.run_dir / "tensorboard"
    train_events = _events(tensorboard_dir / "train")
    assert len(train_events.Tensors("epoch_loss")) == 3
    rates = [float(tf_value(event)) for event in train_events.Tensors("epoch_learning_rate")]
    assert rates == pytest.approx(SMOKE_LEARNING_RATES, rel=1e-4, abs=1e-9)
    image_events = _events(tensorboard_dir / "images")
    assert _png_steps(image_events, "training examples") == [0]
    assert _png_steps(image_events, "validation confusion matrix") == [0, 1, 2]  # after every epoch
    assert list((tensorboard_dir / "train" / "plugins" / "profile").rglob("*.xplane.pb"))


def test_the_profile_of_train_profile_batches_times_each_step_in_the_overview(smoke_run):
    from tests.test_profiling import _overview, _steps

    step_table, messages = _overview(smoke_run.run_dir / "tensorboard")
    steps = _steps(step_table)
    assert [name for name, _ in steps] == ["train 1", "train 2"]  # batches 2 and 3: steps taken before them
    assert all(milliseconds > 0 for _, milliseconds in steps)
    assert not any("No step marker" in message for message in messages)


def tf_value(event) -> float:
    from tensorboard.util import tensor_util

    return float(tensor_util.make_ndarray(event.tensor_proto))


def test_tensorboard_has_the_test_results_mistakes_and_hparams(smoke_run):
    from tensorboard.plugins.hparams import plugin_data_pb2

    tensorboard_dir = smoke_run.run_dir / "tensorboard"
    results = smoke_run.manifest["results"]
    test_events = _events(tensorboard_dir / "test")
    assert [event.value for event in test_events.Scalars("test_accuracy")] == [pytest.approx(results["test_accuracy"])]
    kept = json.loads((smoke_run.run_dir / "train" / "training.json").read_text())["best_epoch"]
    assert _png_steps(test_events, "misclassified test images") == [kept - 1]  # the weights tested: the kept epoch's
    assert [event.step for event in test_events.Scalars("test_loss")] == [kept - 1]
    session = _events(tensorboard_dir).SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    hparams = plugin_data_pb2.HParamsPluginData.FromString(session).session_start_info.hparams
    config = json.loads((smoke_run.run_dir / "config.json").read_text())
    flat = {f"{section}.{key}": value for section, values in config.items() for key, value in values.items()}
    assert set(hparams) == set(flat)
    assert hparams["train.epochs"].number_value == 3 and hparams["data.source"].string_value == "digits"
    assert hparams["model.conv_widths"].string_value == "(8, 16)"


SAVED_MODEL_CONSUMER = """
import json, sys
import numpy as np
import tensorflow as tf
version_dir, test_split = sys.argv[1], sys.argv[2]
with np.load(test_split) as data:
    images, labels = data["images"], data["labels"]
model = tf.saved_model.load(version_dir)
as_float = model.signatures["serving_default"](pixels=tf.constant(images.astype(np.float32)))["probabilities"]
as_uint8 = model.signatures["serving_uint8"](pixels=tf.constant(images))["probabilities"]
print(json.dumps({"float": as_float.numpy().tolist(), "uint8": as_uint8.numpy().tolist(),
                  "labels": labels.tolist(), "project_imported": "components" in sys.modules}))
"""

ONNX_CONSUMER = """
import json, sys
import numpy as np
import onnxruntime as ort
version_dir, test_split = sys.argv[1], sys.argv[2]
with np.load(test_split) as data:
    images = data["images"]
session = ort.InferenceSession(version_dir + "/model.onnx", providers=["CPUExecutionProvider"])
(probabilities,) = session.run(["probabilities"], {"pixels": images.astype(np.float32)})
print(json.dumps({"probabilities": probabilities.tolist(),
                  "inputs": [[i.name, i.shape[0]] for i in session.get_inputs()],
                  "tensorflow_imported": any(m.startswith("tensorflow") for m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def consumers(smoke_run, tmp_path_factory):
    version_dir = smoke_run.manifest["results"]["version_dir"]
    test_split = str(tmp_path_factory.mktemp("consumers") / "test.npz")  # plain arrays: consumers know no TFRecord
    images, labels = read_split(smoke_run.run_dir / "ingest")
    np.savez(test_split, images=images, labels=labels)
    results = {}
    for name, code in (("saved_model", SAVED_MODEL_CONSUMER), ("onnx", ONNX_CONSUMER)):
        process = run_python(code, version_dir, test_split)
        assert process.returncode == 0, process.stderr
        results[name] = json.loads(process.stdout.strip().splitlines()[-1])
    return results


def test_saved_model_classifies_raw_pixels_in_a_tensorflow_only_process(smoke_run, consumers):
    result = consumers["saved_model"]
    assert not result["project_imported"]
    probabilities, labels = np.array(result["float"]), np.array(result["labels"])
    np.testing.assert_allclose(np.array(result["uint8"]), probabilities, atol=1e-6)
    accuracy = float((probabilities.argmax(1) == labels).mean())
    assert accuracy == pytest.approx(smoke_run.manifest["results"]["test_accuracy"], abs=1e-9)


def test_onnx_runs_without_tensorflow_and_agrees_with_the_saved_model(consumers):
    result = consumers["onnx"]
    assert not result["tensorflow_imported"]
    assert result["inputs"] == [["pixels", "batch"]]
    np.testing.assert_allclose(np.array(result["probabilities"]), np.array(consumers["saved_model"]["float"]),
                               atol=1e-4)


@pytest.mark.slow
def test_a_new_model_gets_the_next_version_and_another_kind_of_model_is_refused_the_name(tmp_path):
    for epochs in (2, 3):
        run = run_pipeline_cli(tmp_path, "--preset", "smoke", f"train.epochs={epochs}", "evaluate.max_regression=1")
        assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (tmp_path / "saved_models" / "digits").iterdir()) == ["1", "2"]
    assert len(run.run_dirs) == 2
    other_classes = run_pipeline_cli(tmp_path, "--preset", "smoke", "train.epochs=1", "evaluate.max_regression=1",
                                     "data.class_names=" + ",".join("zero one two three four five six seven eight "
                                                                    "nine".split()))
    assert other_classes.returncode == 2
    assert other_classes.stderr.strip().splitlines()[-1].startswith(
        "error: saved_models/digits/2 takes 8x8x1 images of 10 classes (0, 1, 2, 3, 4, ...), this model takes "
        "8x8x1 images of 10 classes (zero, one, two, three, four, ...); set export.model_name")
    assert sorted(p.name for p in (tmp_path / "saved_models" / "digits").iterdir()) == ["1", "2"]


def test_missing_data_is_one_clear_line_exit_2_and_a_failed_manifest(tmp_path):
    (tmp_path / "empty").mkdir()
    run = run_pipeline_cli(tmp_path, "--preset", "smoke", f"data.source=idx:{tmp_path / 'empty'}")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'empty'}: no train-images* file")
    assert "Traceback" not in run.stderr
    assert run.manifest["status"] == "failed"
    assert "error: " + run.manifest["error"] == run.stderr.strip().splitlines()[-1]
    assert [(s["name"], s["status"]) for s in run.manifest["stages"]] == [("ingest", "failed")]
    assert not (tmp_path / "saved_models").exists()
    assert not [p for p in (tmp_path / "cache" / "ingest").iterdir() if not p.name.startswith(".")]
    with sqlite3.connect(tmp_path / "lineage.sqlite") as db:
        assert db.execute("SELECT status, error FROM runs").fetchall() == [("failed", run.manifest["error"])]
        assert db.execute("SELECT stage, status FROM executions").fetchall() == [("ingest", "failed")]
    listing = subprocess.run([sys.executable, "-m", "pipeline.runs", "--workdir", str(tmp_path)], cwd=REPO_DIR,
                             env=QUIET_ENV, capture_output=True, text=True, check=True).stdout.splitlines()
    assert listing[1].split()[1] == "failed" and listing[1].endswith(run.manifest["error"])


@pytest.mark.slow
def test_tensorboard_serves_runs_by_name_with_hparams_and_renders_in_chromium(smoke_run, tmp_path):
    from tests.test_report import not_blank, screenshot

    with _tensorboard(smoke_run.workdir / "tensorboard") as url:
        plugins = _get_json(f"{url}/data/plugins_listing")
        runs = _get_json(f"{url}/data/runs")
        experiment = _get_json(f"{url}/data/plugin/hparams/experiment", {"experimentName": ""})
        groups = _get_json(f"{url}/data/plugin/hparams/session_groups",
                           {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN"], "colParams": [],
                            "startIndex": 0, "sliceSize": 100})
        image = screenshot(f"{url}/#hparams", tmp_path / "hparams.png", 1200, 800, wait_ms=15000)
    assert all(plugins[name]["enabled"] for name in ("scalars", "images", "profile", "hparams")), plugins
    run_id = smoke_run.run_dir.name
    assert {f"digits/{run_id}/{part}" for part in ("train", "validation", "images", "test")} <= set(runs)
    assert "train.learning_rate" in {info["name"] for info in experiment["hparamInfos"]}
    metrics = {(info["name"].get("group", ""), info["name"]["tag"]) for info in experiment["metricInfos"]}
    assert {("test", "test_accuracy"), ("validation", "epoch_accuracy")} <= metrics
    [group] = groups["sessionGroups"]
    assert group["name"] == f"digits/{run_id}"
    accuracy = next(value["value"] for value in group["metricValues"] if value["name"]["tag"] == "test_accuracy")
    assert accuracy == pytest.approx(smoke_run.manifest["results"]["test_accuracy"])
    assert not_blank(image) > 0.01


@contextlib.contextmanager
def _tensorboard(logdir: Path):
    """A TensorBoard server on a free loopback port, until the block ends; yields its URL."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
                               "--host", "127.0.0.1", "--port", str(port)], env=QUIET_ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                _get_json(f"{url}/data/runs")
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "TensorBoard did not start"
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait()


def _get_json(url: str, body: dict | None = None):
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.load(reply)


@pytest.mark.slow
def test_a_rerun_that_changes_nothing_in_the_model_does_not_publish_it_again(smoke_run, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(smoke_run.workdir, workdir, symlinks=True)
    again = run_pipeline_cli(workdir, "--preset", "smoke", *SMOKE_OVERRIDES, "--force", "export")
    assert again.returncode == 0, again.stderr
    assert {s["name"]: s["status"] for s in again.manifest["stages"]}["export"] == "succeeded"
    assert again.manifest["results"]["version_dir"] == str(workdir.resolve() / "saved_models" / "digits" / "1")
    assert sorted(p.name for p in (workdir / "saved_models" / "digits").iterdir()) == ["1"]
