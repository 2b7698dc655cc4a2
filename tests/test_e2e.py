"""The runner end to end on `smoke`, and its exports loaded by consumers in fresh processes."""

import json
import shutil
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline.config import resolve, to_dict
from tests.conftest import QUIET_ENV, REPO_DIR, run_pipeline_cli, run_python

STAGES = ["ingest", "validate", "preprocess", "train", "evaluate", "export"]


def test_every_stage_succeeds_and_the_manifest_says_so(smoke_run):
    manifest = smoke_run.manifest
    assert manifest["status"] == "succeeded"
    assert [s["name"] for s in manifest["stages"]] == STAGES
    assert all(s["status"] == "succeeded" for s in manifest["stages"])
    seconds = {s["name"]: s["seconds"] for s in manifest["stages"]}
    assert seconds["train"] == max(seconds.values()) > 0.5  # what took time was training
    assert manifest["run_id"] == smoke_run.run_dirs[-1].name and manifest["error"] is None
    assert manifest["results"]["test_accuracy"] > 0.75  # 3 epochs on digits: 0.82 here; chance is 0.1
    assert manifest["results"]["data_fingerprint"] == manifest["artifacts"]["ingest"]["fingerprint"]
    assert manifest["results"]["version_dir"].endswith("saved_models/digits/1")  # named after its data


def test_config_json_is_the_resolved_config(smoke_run):
    written = json.loads((smoke_run.run_dirs[-1] / "config.json").read_text())
    expected = json.loads(json.dumps(to_dict(resolve("smoke", ["train.profile_batches=(2, 3)"]))))
    assert written == expected


def test_summary_table_lists_stages_accuracy_and_exports(smoke_run):
    lines = smoke_run.stdout.splitlines()
    for stage in STAGES:
        assert any(line.startswith(stage) and "succeeded" in line for line in lines), stage
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


def test_tensorboard_has_scalars_images_and_a_profile(smoke_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tensorboard_dir = smoke_run.run_dirs[-1] / "tensorboard"
    train_events = EventAccumulator(str(tensorboard_dir / "train")).Reload()
    assert "epoch_loss" in train_events.Tags()["tensors"]
    assert len(train_events.Tensors("epoch_loss")) == 3
    image_events = EventAccumulator(str(tensorboard_dir / "images")).Reload()
    assert "train examples" in image_events.Tags()["tensors"]
    assert list((tensorboard_dir / "train" / "plugins" / "profile").rglob("*.xplane.pb"))


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
def consumers(smoke_run):
    version_dir = smoke_run.manifest["results"]["version_dir"]
    test_split = str(smoke_run.run_dirs[-1] / "ingest" / "test.npz")
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


def test_tensorboard_serves_scalars_images_and_profile_tabs(smoke_run):
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(smoke_run.workdir / "runs"),
                               "--host", "127.0.0.1", "--port", str(port)], env=QUIET_ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugins_listing", timeout=5) as reply:
                    plugins = json.load(reply)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "TensorBoard did not start"
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait()
    assert all(plugins[name]["enabled"] for name in ("scalars", "images", "profile")), plugins


def test_a_rerun_that_changes_nothing_in_the_model_does_not_publish_it_again(smoke_run, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(smoke_run.workdir, workdir, symlinks=True)
    again = run_pipeline_cli(workdir, "--preset", "smoke", "train.profile_batches=(2, 3)", "--force", "export")
    assert again.returncode == 0, again.stderr
    assert {s["name"]: s["status"] for s in again.manifest["stages"]}["export"] == "succeeded"
    assert again.manifest["results"]["version_dir"] == str(workdir.resolve() / "saved_models" / "digits" / "1")
    assert sorted(p.name for p in (workdir / "saved_models" / "digits").iterdir()) == ["1"]
