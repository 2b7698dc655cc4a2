"""The GPU precision path, run for real on the CPU: mixed policies train, evaluate and export."""

import json
from pathlib import Path

import pytest

from tests.conftest import run_pipeline_cli


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_runs_end_to_end_with_parity(tmp_path, policy):
    run = run_pipeline_cli(tmp_path, "--preset", "smoke", f"train.precision={policy}")
    assert run.returncode == 0, run.stderr
    manifest = run.manifest
    assert manifest["precision"] == policy
    assert manifest["metrics"]["test_accuracy"] > 0.5
    metadata = json.loads((Path(manifest["export"]["version_dir"]) / "metadata.json").read_text())
    assert metadata["trained_precision"] == policy and metadata["exported_precision"] == "float32"
    assert metadata["parity_max_abs_diff"] <= 1e-4
