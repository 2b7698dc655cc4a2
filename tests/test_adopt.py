"""Adopting the template with no edit to the package: one's own network file and TOML file, in one's own folder.

A project folder outside the repository holds `my_nets.py` and `experiment.toml`; from there the
documented commands train, export, write sample images, predict and serve, as a new user would run
them. Editing the network file retrains; rerunning the same file reuses everything.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from components.loaded_model import load_exported
from tests.conftest import OFF_BY_DEFAULT, QUIET_ENV
from tests.test_serve import start_server

pytestmark = pytest.mark.slow  # four pipeline commands and a server: about a minute

NETWORK = """
    import keras


    def build(input_shape, num_classes, width=8):
        inputs = keras.Input(input_shape)
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        x = keras.layers.Dense(32, activation="relu")(x)
        return keras.Model(inputs, keras.layers.Dense(num_classes)(x))
    """

EXPERIMENT = """
    [model]
    builder = "my_nets.py:build"

    [model.options]
    width = 12

    [train]
    epochs = 8

    [export]
    model_name = "mine"
    """


def command(project_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m ARGS` run from the user's folder, as they would type it there."""
    return subprocess.run([sys.executable, "-m", *args], cwd=project_dir, env=QUIET_ENV, capture_output=True,
                          text=True, timeout=600)


def stage_statuses(project_dir: Path) -> dict[str, str]:
    runs = sorted((project_dir / "runs").iterdir(), key=lambda run: (run / "config.json").stat().st_mtime_ns)
    return {stage["name"]: stage["status"] for stage in json.loads((runs[-1] / "manifest.json").read_text())["stages"]}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The user's folder after `python -m pipeline.run --config experiment.toml` succeeded there."""
    project_dir = tmp_path_factory.mktemp("my_project")
    (project_dir / "my_nets.py").write_text(textwrap.dedent(NETWORK))
    (project_dir / "experiment.toml").write_text(textwrap.dedent(EXPERIMENT))
    run = command(project_dir, "pipeline.run", "--config", "experiment.toml")
    assert run.returncode == 0, run.stderr
    assert "network      my_nets.py:build, " in run.stdout
    return project_dir


def test_the_users_network_and_file_train_and_export_a_blessed_model(project):
    manifest_results = json.loads(sorted((project / "runs").glob("*/manifest.json"))[0].read_text())["results"]
    assert manifest_results["network"] == "my_nets.py:build" and manifest_results["blessed"]
    assert manifest_results["version_dir"].endswith("saved_models/mine/1")
    network = json.loads(next((project / "runs").glob("*/train/network.json")).read_text())
    assert network["model"]["options"] == {"width": 12}
    assert network["model"]["builder"] == f"{project / 'my_nets.py'}:build"
    # 3x3x1x12+12 conv, 12x32+32 dense, 32x10+10 logits
    assert load_exported(project / "saved_models" / "mine").probabilities(np.zeros((1, 8, 8, 1), "float32")).shape \
        == (1, 10)
    params = json.loads(next((project / "runs").glob("*/train/training.json")).read_text())["parameters"]
    assert params == (9 * 12 + 12) + (12 * 32 + 32) + (32 * 10 + 10)


def test_sample_images_are_predicted_and_served_as_the_exported_model_says(project):
    written = command(project, "pipeline.runs", "images", "--out", "sample_images")
    assert written.returncode == 0, written.stderr
    files = sorted((project / "sample_images").glob("*.png"))
    assert len(files) == 8
    predicted = command(project, "pipeline.predict", "saved_models/mine", "sample_images", "--format", "json")
    assert predicted.returncode == 0, predicted.stderr
    model = load_exported(project / "saved_models" / "mine")
    expected = model.predict(files)
    answers = {Path(answer["path"]).name: answer["predictions"][0]["label"] for answer in json.loads(predicted.stdout)}
    assert answers == {path.name: prediction.labels[0] for path, prediction in zip(files, expected)}
    server = start_server(project)
    try:
        body = {"instances": [{"b64": base64.b64encode(path.read_bytes()).decode()} for path in files]}
        response = requests.post(f"{server.url}/v1/models/mine:predict", json=body, timeout=30)
        assert response.status_code == 200, response.text
        pixels = np.stack([np.asarray(Image.open(path))[..., None] for path in files]).astype("float32")
        np.testing.assert_allclose(response.json()["predictions"], model.probabilities(pixels), atol=1e-5)
    finally:
        server.stop()


def test_the_same_file_again_reuses_everything_and_an_edited_network_retrains(project):
    again = command(project, "pipeline.run", "--config", "experiment.toml")
    assert again.returncode == 0, again.stderr
    statuses = stage_statuses(project)
    assert [statuses.pop(name) for name in OFF_BY_DEFAULT] == ["skipped"] * len(OFF_BY_DEFAULT)  # off by default
    assert set(statuses.values()) == {"cached"}
    network_file = project / "my_nets.py"
    network_file.write_text(network_file.read_text().replace("Dense(32,", "Dense(24,"))
    edited = command(project, "pipeline.run", "--config", "experiment.toml", "--until", "train")
    assert edited.returncode == 0, edited.stderr
    statuses = stage_statuses(project)
    assert statuses["ingest"] == "cached" and statuses["train"] == "succeeded"
