"""Killed runs: training resumes to the same result, and nothing half-written looks finished."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import QUIET_ENV, REPO_DIR, run_pipeline_cli

pytestmark = pytest.mark.slow  # a minute or more: run by .ci/run with -m slow

# Long enough on digits (about 0.2 s an epoch) to be killed in the middle of training.
ARGS = ("--preset", "smoke", "train.epochs=12", "model.conv_widths=(16, 32)")


def start(workdir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.run", "--workdir", str(workdir), *args],
                            cwd=REPO_DIR, env=QUIET_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_when(process: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL `process` as soon as `ready()` holds."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "timed out waiting to kill"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


def saved_epoch(workdir: Path) -> int | None:
    states = list((workdir / "cache" / "train").glob("*.resume/state.npz"))
    if not states:
        return None
    try:
        with np.load(states[0]) as state:
            return int(state["epoch"])
    except (OSError, ValueError, KeyError):  # caught mid-rename
        return None


def test_training_killed_mid_run_resumes_to_the_same_result(tmp_path):
    reference = run_pipeline_cli(tmp_path / "reference", *ARGS)
    assert reference.returncode == 0, reference.stderr

    workdir = tmp_path / "killed"
    kill_when(start(workdir, *ARGS), lambda: (saved_epoch(workdir) or 0) >= 1)
    epoch = saved_epoch(workdir)
    assert epoch is not None and epoch < 11, "killed after training had finished"
    train_dir = workdir / "cache" / "train"
    assert not [p for p in train_dir.iterdir() if not p.name.startswith(".") and not p.name.endswith(".resume")]
    assert not list((workdir / "runs").glob("*/manifest.json"))

    resumed = run_pipeline_cli(workdir, *ARGS)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {epoch + 1}" in resumed.stderr
    metrics = Path(resumed.manifest["artifacts"]["evaluate"]["metrics_path"]).read_bytes()
    assert metrics == Path(reference.manifest["artifacts"]["evaluate"]["metrics_path"]).read_bytes()
    assert resumed.manifest["artifacts"]["train"]["weights_sha256"] == \
        reference.manifest["artifacts"]["train"]["weights_sha256"]
    assert not list(train_dir.glob("*.resume"))

    listing = subprocess.run([sys.executable, "-m", "pipeline.runs", "--workdir", str(workdir)], cwd=REPO_DIR,
                             env=QUIET_ENV, capture_output=True, text=True, check=True).stdout
    assert " killed " in listing and " succeeded " in listing


def test_export_killed_midway_leaves_no_version_folder(tmp_path):
    model_dir = tmp_path / "saved_models" / "digits"
    kill_when(start(tmp_path, "--preset", "smoke"), lambda: model_dir.exists() and any(
        p.name.startswith(".staging-") for p in model_dir.iterdir()))
    assert not [p for p in model_dir.iterdir() if p.name.isdigit()]

    run = run_pipeline_cli(tmp_path, "--preset", "smoke")
    assert run.returncode == 0, run.stderr
    statuses = {stage["name"]: stage["status"] for stage in run.manifest["stages"]}
    assert statuses["train"] == "cached" and statuses["export"] == "succeeded"
    versions = [p for p in model_dir.iterdir() if p.name.isdigit()]
    assert [p.name for p in versions] == ["1"] and (versions[0] / "saved_model.pb").exists()
    assert json.loads((versions[0] / "metadata.json").read_text())["run_id"] == run.manifest["run_id"]


def test_sigterm_mid_training_is_recorded_and_the_rerun_resumes(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "pipeline.run", "--workdir", str(tmp_path), *ARGS],
                               cwd=REPO_DIR, env=QUIET_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 300
    while (saved_epoch(tmp_path) or 0) < 1:
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be stopped"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143
    assert stderr.strip().splitlines()[-1].startswith("terminated (SIGTERM): rerun the same command to resume")
    manifest = json.loads(next((tmp_path / "runs").glob("*/manifest.json")).read_text())
    assert manifest["status"] == "failed" and manifest["error"] == "terminated (SIGTERM)"
    resumed = run_pipeline_cli(tmp_path, *ARGS)
    assert resumed.returncode == 0 and "resuming after epoch" in resumed.stderr
