"""The GPU precision path, run for real on the CPU: mixed policies train, evaluate and export."""

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from tests.conftest import read_split, run_pipeline_cli, run_python

pytestmark = pytest.mark.slow  # a minute or more: run by .ci/run with -m slow


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_runs_end_to_end_with_parity(tmp_path, policy):
    run = run_pipeline_cli(tmp_path, "--preset", "smoke", f"train.precision={policy}")
    assert run.returncode == 0, run.stderr
    manifest = run.manifest
    assert manifest["results"]["precision"] == policy
    assert manifest["results"]["test_accuracy"] > 0.75  # 3 epochs on digits; chance is 0.1
    metadata = json.loads((Path(manifest["results"]["version_dir"]) / "metadata.json").read_text())
    assert metadata["trained_precision"] == policy and metadata["exported_precision"] == "float32"
    # The accuracy recorded is the shipped float32 model's, measured again here on the test split.
    images, labels = read_split(run.run_dir / "ingest")
    session = onnxruntime.InferenceSession(manifest["results"]["onnx_path"], providers=["CPUExecutionProvider"])
    predicted = session.run(["probabilities"], {"pixels": images.astype(np.float32)})[0].argmax(1)
    assert metadata["metrics"]["test_accuracy"] == float((predicted == labels).mean())


MIRRORED_ON_TWO_CPUS = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from pipeline.run import main
sys.exit(main(sys.argv[1:]))
"""


def test_mirrored_strategy_trains_on_two_logical_cpus(tmp_path):
    process = run_python(MIRRORED_ON_TWO_CPUS, "--preset", "smoke", "--workdir", str(tmp_path),
                         "train.strategy=mirrored")
    assert process.returncode == 0, process.stderr
    manifest = json.loads(next((tmp_path / "runs").glob("*/manifest.json")).read_text())
    assert manifest["artifacts"]["train"]["replicas"] == 2
    assert manifest["results"]["test_accuracy"] > 0.75
    assert Path(manifest["results"]["version_dir"], "saved_model.pb").exists()
