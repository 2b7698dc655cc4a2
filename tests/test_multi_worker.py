"""train.strategy=multi_worker for real: two worker processes on 127.0.0.1, each with its own TF_CONFIG.

Both run the same command with the same workdir, as they would on two machines sharing storage.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from bench.local_cluster import local_cluster
from tests.conftest import QUIET_ENV, REPO_DIR, run_pipeline_cli

pytestmark = pytest.mark.slow

# Digits, the default model; per worker batch 32, so the global batch is the default run's 64.
SETTINGS = ("train.epochs=30", "train.batch_size=32", "train.log_images=0")
SHARED = ("data.shard_mb=0.021", "train.in_memory_mb=0")  # 4 training shards, streamed: each worker reads two


@contextlib.contextmanager
def _workers(workdir: Path, *overrides: str, worker_only: tuple[str, ...] = ()) -> Iterator[list[subprocess.Popen]]:
    """Two `python -m pipeline.run` processes, worker 0 (the chief) and worker 1, on ports held for them.

    A worker still running when the block ends is killed; then the ports are let go.
    """
    with local_cluster(2) as worker_envs:
        processes = [subprocess.Popen(
            [sys.executable, "-m", "pipeline.run", "--workdir", str(workdir), "train.strategy=multi_worker",
             *SETTINGS, *overrides, *(worker_only if index else ())],
            cwd=REPO_DIR, env={**QUIET_ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for index, env in enumerate(worker_envs)]
        try:
            yield processes
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.communicate()


def _finish(processes: list[subprocess.Popen], timeout: float = 600) -> list[tuple[int, str, str]]:
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=timeout)
        results.append((process.returncode, stdout, stderr))
    return results


def _run_workers(workdir: Path, *overrides: str, worker_only: tuple[str, ...] = (),
                 timeout: float = 600) -> list[tuple[int, str, str]]:
    """Both workers run to their end: each one's exit code, stdout and stderr."""
    with _workers(workdir, *overrides, worker_only=worker_only) as processes:
        return _finish(processes, timeout)


def _weights(text: str) -> str:
    return re.findall(r"weights sha256 ([0-9a-f]{64})", text)[-1]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two_workers")
    return workdir, _run_workers(workdir, *SHARED)


def test_both_workers_exit_0_with_identical_weights(two_workers):
    _, ((chief_code, chief_out, chief_err), (worker_code, worker_out, worker_err)) = two_workers
    assert chief_code == 0, chief_err[-3000:]
    assert worker_code == 0, worker_err[-3000:]
    assert "worker 1 of 2 workers: trained with the chief" in worker_out
    assert _weights(chief_err) == _weights(worker_out)


def test_only_the_chief_writes_one_run_one_export_and_one_tensorboard_run(two_workers):
    workdir, _ = two_workers
    runs = list((workdir / "runs").iterdir())
    assert len(runs) == 1
    assert [path.name for path in (workdir / "saved_models" / "digits").iterdir()] == ["1"]
    assert len(list((workdir / "tensorboard" / "digits").iterdir())) == 1
    manifest = json.loads((runs[0] / "manifest.json").read_text())
    assert manifest["status"] == "succeeded"
    assert manifest["results"]["strategy"] == "multi_worker" and manifest["results"]["workers"] == 2
    assert manifest["results"]["replicas"] == 2
    # Every stage ran once: the worker found ingest, validate and preprocess in the cache.
    for stage in ("ingest", "validate", "preprocess", "train"):
        assert len([path for path in (workdir / "cache" / stage).iterdir() if path.is_dir()]) == 1, stage
    splits = json.loads((runs[0] / "ingest" / "splits.json").read_text())
    assert len(splits["splits"]["train"]["shards"]) == 4  # so each worker read its own two shard files


def test_accuracy_is_within_two_points_of_one_process_with_the_same_global_batch(two_workers, tmp_path):
    workdir, _ = two_workers
    manifest = json.loads(next((workdir / "runs").iterdir()).joinpath("manifest.json").read_text())
    # One process, batch 64, and the learning rate two replicas of 32 get (x sqrt 2).
    single = run_pipeline_cli(tmp_path, *SETTINGS, *SHARED, "train.batch_size=64",
                              f"train.learning_rate={3e-3 * math.sqrt(2)}")
    assert single.returncode == 0, single.stderr
    single_accuracy = single.manifest["results"]["test_accuracy"]
    assert single_accuracy > 0.9
    assert abs(manifest["results"]["test_accuracy"] - single_accuracy) <= 0.02


def _resume_state(workdir: Path) -> Path | None:
    found = list((workdir / "cache" / "train").glob("*.resume/state.npz")) if (workdir / "cache").exists() else []
    return found[0] if found else None


def test_a_worker_killed_mid_training_resumes_from_the_last_finished_epoch(tmp_path):
    import numpy as np

    with _workers(tmp_path, "train.epochs=12") as processes:
        deadline = time.time() + 600
        while time.time() < deadline:
            state = _resume_state(tmp_path)
            if state is not None and int(np.load(state)["epoch"]) >= 1:  # two epochs finished
                break
            assert all(process.poll() is None for process in processes), "a worker ended before the kill"
            time.sleep(0.5)
        processes[1].send_signal(signal.SIGKILL)
        try:  # the chief's next collective fails: it stops with one line, not a hang
            processes[0].wait(timeout=60)
        except subprocess.TimeoutExpired:
            processes[0].send_signal(signal.SIGKILL)
        _, chief_err = processes[0].communicate()
        processes[1].communicate()
    assert processes[0].returncode == 1, chief_err[-3000:]
    assert "error: a worker stopped during training" in chief_err and "Traceback" not in chief_err
    finished_epochs = int(np.load(_resume_state(tmp_path))["epoch"]) + 1
    assert not (tmp_path / "saved_models").exists()

    (chief_code, chief_out, chief_err), (worker_code, worker_out, worker_err) = _run_workers(
        tmp_path, "train.epochs=12")
    assert chief_code == 0, chief_err[-3000:]
    assert worker_code == 0, worker_err[-3000:]
    for log in (chief_err, worker_err):
        resumed = re.findall(r"resuming after epoch (\d+)", log)
        assert resumed and int(resumed[0]) == finished_epochs  # from the last finished epoch, not the start
    assert _weights(chief_err) == _weights(worker_out)
    assert [path.name for path in (tmp_path / "saved_models" / "digits").iterdir()] == ["1"]
    history = json.loads(next((tmp_path / "cache" / "train").glob("*/history.json")).read_text())
    assert len(history["loss"]) == 12  # the epochs before the kill, and those after it
    assert _resume_state(tmp_path) is None  # the chief cleared its checkpoint once done


def test_under_a_time_budget_the_workers_stop_together_with_the_chiefs_schedule(tmp_path):
    (chief_code, _, chief_err), (worker_code, worker_out, worker_err) = _run_workers(
        tmp_path, "train.epochs=200", "train.max_seconds=6")
    assert chief_code == 0, chief_err[-3000:]
    assert worker_code == 0, worker_err[-3000:]
    # The budget runs on each worker's own clock; the chief's plan and stop are what both follow.
    assert _weights(chief_err) == _weights(worker_out)
    training = json.loads(next((tmp_path / "cache" / "train").glob("*/training.json")).read_text())
    assert training["stopped_by"] == "time budget" and training["epochs_run"] < 200


def test_a_worker_stops_waiting_when_the_chiefs_run_fails_before_training(tmp_path):
    from tests.conftest import make_images, write_image_folder

    paths = write_image_folder(tmp_path / "images", *make_images(10))
    paths[3].write_bytes(b"not an image")
    (chief_code, _, chief_err), (worker_code, _, worker_err) = _run_workers(
        tmp_path / "work", f"data.source=folder:{tmp_path / 'images'}", timeout=120)
    assert chief_code == 2 and "unreadable image file" in chief_err
    assert worker_code == 2
    assert "ended before training (failed:" in worker_err and "unreadable image file" in worker_err
    assert not (tmp_path / "work" / "cache" / "train").exists()


def test_workers_do_not_wait_for_training_the_chief_will_not_run(tmp_path):
    (chief_code, _, chief_err), (worker_code, worker_out, worker_err) = _run_workers(
        tmp_path, "--until", "preprocess", timeout=300)
    assert chief_code == 0, chief_err[-3000:]
    assert worker_code == 0, worker_err[-3000:]
    assert "train is not among the selected stages: nothing to join" in worker_out
    assert not (tmp_path / "cache" / "train").exists()


def test_workers_that_would_train_different_models_stop_with_one_line(tmp_path):
    # As if the worker's host resolved another precision (train.precision=auto on another CPU).
    (chief_code, _, chief_err), (worker_code, _, worker_err) = _run_workers(
        tmp_path, "train.precision=float32", worker_only=("train.precision=mixed_bfloat16",))
    for code, err in ((chief_code, chief_err), (worker_code, worker_err)):
        assert code == 2, err[-3000:]
        assert "error: the workers do not start training alike (" in err and "Traceback" not in err
    assert "(the plan differs from the chief's" in worker_err and "(another worker differs" in chief_err
    assert not (tmp_path / "saved_models").exists()
