"""Real data: Fashion-MNIST from Debian's dataset-fashion-mnist, 2 epochs of the `fashion` preset."""

import os
from pathlib import Path

import pytest

from pipeline.config import PRESETS
from tests.conftest import run_pipeline_cli

pytestmark = pytest.mark.slow  # a minute or more: run by .ci/run with -m slow

FASHION_DIR = Path(PRESETS["fashion"]["data.source"].partition(":")[2])


@pytest.fixture
def fashion_dir() -> Path:
    if not FASHION_DIR.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{FASHION_DIR} is missing: .ci/run must install dataset-fashion-mnist")
        pytest.skip(f"{FASHION_DIR} missing: apt-get install dataset-fashion-mnist")
    return FASHION_DIR


def test_fashion_reaches_088_in_two_epochs(tmp_path, fashion_dir):
    run = run_pipeline_cli(tmp_path, "--preset", "fashion", "train.epochs=2", timeout=900)
    assert run.returncode == 0, run.stderr
    manifest = run.manifest
    assert manifest["artifacts"]["ingest"]["num_examples"] == {"train": 55000, "val": 5000, "test": 10000}
    assert manifest["results"]["test_accuracy"] >= 0.88
    labels = (Path(manifest["results"]["version_dir"]) / "labels.txt").read_text().splitlines()
    assert labels[0] == "T-shirt/top" and labels[9] == "Ankle boot"
