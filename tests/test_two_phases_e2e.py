"""Two phases through the pipeline (docs/pretrained.md, "Two phases"): a warm start from the smoke export
under other class names, killed with SIGKILL right after an epoch and resumed, and trained by two worker
processes on 127.0.0.1, killed and resumed there too, and under a time budget.

Digits has 1,293 training images: in batches of 32, 40 steps an epoch and 160 in the 4 epochs planned;
phase two begins with the first epoch past 0.4 x 160 = 64 steps, epoch 3 (step 80). The fast, in-process
checks of the same claims are in tests/test_two_phases.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from bench.local_cluster import local_cluster
from tests.conftest import QUIET_ENV, REPO_DIR, run_pipeline_cli, run_python

pytestmark = pytest.mark.slow  # several pipeline runs and worker pairs: minutes

HEAD_EPOCHS, SWITCH_STEP = 2, 80

# `python -c KILL_AFTER EPOCH ARGS...`: `python -m pipeline.run ARGS...` that kills itself with SIGKILL right after
# the epoch checkpoint of EPOCH (counted from 0) is written, as a machine lost then would. components.train is
# patched when it is first imported, not before: a multi-worker run must configure TensorFlow before it loads.
KILL_AFTER = """
import importlib.abc, importlib.machinery, os, signal, sys

KILLED_AFTER = int(sys.argv[1])


class KillAfterTheCheckpoint(importlib.abc.MetaPathFinder):
    # Stays in sys.meta_path: the pipeline's code fingerprint looks components.train up before it is imported.
    def find_spec(self, name, path, target=None):
        if name != "components.train":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            save = module.EpochCheckpoint.on_epoch_end

            def save_then_die(self, epoch, logs=None):
                save(self, epoch, logs)
                if epoch == KILLED_AFTER:
                    os.kill(os.getpid(), signal.SIGKILL)

            module.EpochCheckpoint.on_epoch_end = save_then_die

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, KillAfterTheCheckpoint())
from pipeline.run import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def parent_dir(tmp_path_factory) -> Path:
    """The smoke run's export, saved_models/digits: the parent of every run here."""
    workdir = tmp_path_factory.mktemp("parent")
    run = run_pipeline_cli(workdir, "--preset", "smoke")
    assert run.returncode == 0, run.stderr
    return workdir / "saved_models" / "digits"


def phased(parent_dir: Path, *overrides: str) -> tuple[str, ...]:
    """A warm start from `parent_dir` under digits' 10 classes named otherwise: a new head, trained alone first."""
    return ("--preset", "smoke", "data.class_names=a,b,c,d,e,f,g,h,i,j", "export.model_name=other",
            f"model.init={parent_dir}", "train.epochs=4", "train.head_share=0.4", "train.precision=mixed_bfloat16",
            *overrides)


def _untimed(training_path: Path) -> dict:
    """`training.json` without its timings."""
    record = json.loads(training_path.read_text())
    return {key: value for key, value in record.items()
            if key not in ("seconds", "images_per_second", "gflops_per_second")}


def _training(train_artifact: dict) -> dict:
    return _untimed(Path(train_artifact["training_path"]))


def _saved_state(workdir: Path) -> dict[str, float]:
    """The epoch and the switch's step the epoch checkpoint holds (those of them it holds)."""
    (state_path,) = (workdir / "cache" / "train").glob("*.resume/state.npz")
    with np.load(state_path) as state:
        return {key: float(state[key]) for key in ("epoch", "fine_tune_from") if key in state}


@pytest.fixture(scope="module")
def uninterrupted(parent_dir, tmp_path_factory):
    run = run_pipeline_cli(tmp_path_factory.mktemp("uninterrupted"), *phased(parent_dir))
    assert run.returncode == 0, run.stderr
    return run


def test_the_phased_warm_start_trains_the_head_alone_for_two_epochs_in_mixed_bfloat16(uninterrupted):
    results, train = uninterrupted.manifest["results"], uninterrupted.manifest["artifacts"]["train"]
    assert results["precision"] == train["precision"] == "mixed_bfloat16"
    assert results["parent"] == "digits/1" and results["starting_weights"] == "saved_models/digits/1"
    record = _training(train)
    assert (record["head_epochs"], record["epochs_run"], record["stopped_by"]) == (HEAD_EPOCHS, 4, "planned epochs")
    # Phase two trains every layer but the batch norms: their 2 x (8 + 16) moving statistics, gamma and beta.
    assert record["frozen_parameters"] == 4 * (8 + 16)
    history = json.loads(Path(train["history_path"]).read_text())
    rates = history["learning_rate"]
    assert rates[HEAD_EPOCHS] < 0.1 * rates[HEAD_EPOCHS - 1]  # fine_tune_lr_scale, on a cosine that falls too


@pytest.mark.parametrize("killed_after", [
    HEAD_EPOCHS - 1,  # the last epoch of phase one: the resumed run begins by switching
    HEAD_EPOCHS,  # the first epoch of phase two: its checkpoint holds the switch
])
def test_killed_right_after_an_epoch_a_resumed_run_ends_as_the_uninterrupted_one(
        parent_dir, uninterrupted, tmp_path, killed_after):
    killed = run_python(KILL_AFTER, str(killed_after), "--workdir", str(tmp_path), *phased(parent_dir))
    assert killed.returncode == -9, killed.stderr[-3000:]
    saved = _saved_state(tmp_path)

    resumed = run_pipeline_cli(tmp_path, *phased(parent_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {killed_after + 1}" in resumed.stderr
    train, reference = resumed.manifest["artifacts"]["train"], uninterrupted.manifest["artifacts"]["train"]
    assert train["weights_sha256"] == reference["weights_sha256"]
    assert _training(train) == _training(reference)  # head_epochs, the parameter counts, the epoch kept
    metrics = Path(resumed.manifest["artifacts"]["evaluate"]["metrics_path"]).read_bytes()
    assert metrics == Path(uninterrupted.manifest["artifacts"]["evaluate"]["metrics_path"]).read_bytes()
    assert saved == {"epoch": killed_after, "fine_tune_from": SWITCH_STEP if killed_after >= HEAD_EPOCHS else -1.0}


# Two workers of 16 images a step: the global batch of the one-process run (32), and its peak learning rate
# (two replicas' is sqrt(2) times train.learning_rate).
TWO_WORKERS = ("train.strategy=multi_worker", "train.batch_size=16", f"train.learning_rate={3e-3 / math.sqrt(2)}",
               "train.log_images=0")


@contextlib.contextmanager
def _workers(workdir: Path, parent_dir: Path, *overrides: str,
             worker_killed_after: int | None = None) -> Iterator[list[subprocess.Popen]]:
    """The chief and worker 1 on 127.0.0.1; worker 1 kills itself after that epoch's checkpoint if one is given."""
    command = ("--workdir", str(workdir), *phased(parent_dir, *TWO_WORKERS, *overrides))
    killing = ("-c", KILL_AFTER, str(worker_killed_after)) if worker_killed_after is not None else None
    with local_cluster(2) as worker_envs:
        processes = [subprocess.Popen(
            [sys.executable, *(killing if index and killing else ("-m", "pipeline.run")), *command],
            cwd=REPO_DIR, env={**QUIET_ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for index, env in enumerate(worker_envs)]
        try:
            yield processes
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.communicate()


def _run_workers(workdir: Path, parent_dir: Path, *overrides: str) -> list[tuple[int, str, str]]:
    with _workers(workdir, parent_dir, *overrides) as processes:
        outputs = [process.communicate(timeout=600) for process in processes]
        return [(process.returncode, *output) for process, output in zip(processes, outputs)]


def _weights(text: str) -> str:
    return re.findall(r"weights sha256 ([0-9a-f]{64})", text)[-1]


def _chiefs_training(workdir: Path) -> dict:
    return _untimed(next((workdir / "cache" / "train").glob("*/training.json")))


@pytest.fixture(scope="module")
def two_workers(parent_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two_workers")
    return workdir, _run_workers(workdir, parent_dir)


def test_two_workers_switch_together_and_end_with_identical_weights(two_workers, uninterrupted):
    workdir, ((chief_code, _, chief_err), (worker_code, worker_out, worker_err)) = two_workers
    assert chief_code == 0, chief_err[-3000:]
    assert worker_code == 0, worker_err[-3000:]
    assert "worker 1 of 2 workers: trained with the chief" in worker_out
    assert _weights(chief_err) == _weights(worker_out)
    record, one_process = _chiefs_training(workdir), _training(uninterrupted.manifest["artifacts"]["train"])
    assert record["head_epochs"] == one_process["head_epochs"] == HEAD_EPOCHS
    for key in ("epochs_run", "batch_size", "parameters", "trainable_parameters", "frozen_parameters"):
        assert record[key] == one_process[key], key
    manifest = json.loads(next((workdir / "runs").glob("*/manifest.json")).read_text())
    assert manifest["results"]["workers"] == 2 and manifest["results"]["parent"] == "digits/1"
    # The same recipe as one process (global batch, peak rate, the switch): the same accuracy, within 2 points.
    assert abs(manifest["results"]["test_accuracy"] - uninterrupted.manifest["results"]["test_accuracy"]) <= 0.02


def test_a_worker_killed_right_after_the_switch_both_resume_to_the_uninterrupted_weights(
        parent_dir, two_workers, tmp_path):
    with _workers(tmp_path, parent_dir, worker_killed_after=HEAD_EPOCHS) as (chief, worker):
        worker.wait(timeout=600)
        try:  # the chief's next collective fails: it stops with one line, not a hang
            chief.wait(timeout=60)
        except subprocess.TimeoutExpired:
            chief.kill()
        _, chief_err = chief.communicate()
        worker.communicate()
    assert worker.returncode == -9
    assert chief.returncode == 1 and "error: a worker stopped during training" in chief_err, chief_err[-3000:]
    saved = _saved_state(tmp_path)

    (chief_code, _, chief_err), (worker_code, worker_out, worker_err) = _run_workers(tmp_path, parent_dir)
    assert chief_code == 0, chief_err[-3000:]
    assert worker_code == 0, worker_err[-3000:]
    for log in (chief_err, worker_err):
        assert f"resuming after epoch {HEAD_EPOCHS + 1}" in log
    _, ((_, _, uninterrupted_err), _) = two_workers
    assert _weights(chief_err) == _weights(worker_out) == _weights(uninterrupted_err)
    assert _chiefs_training(tmp_path) == _chiefs_training(two_workers[0])
    assert saved == {"epoch": HEAD_EPOCHS, "fine_tune_from": SWITCH_STEP}  # steps of 2 x 16 images


def test_under_a_time_budget_two_workers_switch_on_the_chiefs_plan_and_stop_together(parent_dir, tmp_path):
    # Each worker's budget plans by its own clock; the switch reads the planned steps, so it must be the
    # chief's plan that every worker switches by, or their step functions would train different weights.
    # A head share of 0.05 switches in any run of two epochs or more.
    (chief_code, _, chief_err), (worker_code, worker_out, worker_err) = _run_workers(
        tmp_path, parent_dir, "train.epochs=100", "train.max_seconds=15", "train.head_share=0.05")
    assert chief_code == 0, chief_err[-3000:]
    assert worker_code == 0, worker_err[-3000:]
    assert _weights(chief_err) == _weights(worker_out)
    record = _chiefs_training(tmp_path)
    assert record["stopped_by"] == "time budget" and 1 <= record["head_epochs"] < record["epochs_run"] < 100
