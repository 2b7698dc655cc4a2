"""Several workers, one run: what a worker other than the chief does under train.strategy=multi_worker.

Every worker runs the same command with the same `--workdir` on shared storage, each with its own
`TF_CONFIG`. The chief runs the pipeline as a single process would. Every other worker writes
nothing shared: it waits for the chief's results of the stages before train (found by fingerprint
in the shared cache, so the stages run once), joins training, where the collectives keep it in step
with the chief, and leaves evaluate, export and the run folder to the chief. Its own outputs go to a
temporary folder that is removed; the epoch checkpoint it resumes from is the chief's.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from components.cluster import Cluster, this_cluster
from components.errors import UserError
from components.strategy import make_strategy
from components.train_plan import plan_training
from pipeline.cache import StageCache
from pipeline.config import PipelineConfig
from pipeline.lineage import newest_run
from pipeline.orchestrator import execute_pipeline, load_function, resume_dir, stage_arguments, stage_key
from pipeline.registry import STAGES, RunPlaces
from pipeline.selection import Selection

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
HINT_SECONDS = 60.0  # how often a waiting worker says so
STARTUP_SLACK = 600.0  # seconds the chief may have started before a worker


def execute_share(config: PipelineConfig, workdir: Path, selection: Selection = Selection(),
                  command: str = "") -> dict[str, Any]:
    """This process's part of a run: all of it (one process, or the chief), or a worker's share of training.

    Returns:
        The run's manifest; for a worker other than the chief, a summary of what it did.
    """
    if config.train.strategy != "multi_worker":
        return execute_pipeline(config, workdir, selection, command)
    cluster = this_cluster()
    # Before any stage: the strategy must exist before TensorFlow runs its first operation.
    make_strategy(plan_training(config.train, cluster=cluster).strategy)
    log.info("multi_worker: %s %d of %d workers%s", cluster.task_type, cluster.task_index, cluster.num_workers,
             " (the chief)" if cluster.is_chief else "")
    if cluster.is_chief:
        return execute_pipeline(config, workdir, selection, command)
    return join_training(config, workdir, selection, cluster)


def join_training(config: PipelineConfig, workdir: Path, selection: Selection, cluster: Cluster) -> dict[str, Any]:
    """Train alongside the chief once its earlier stages are in the cache; returns a summary for the CLI.

    Raises:
        UserError: the chief's run failed before training (so there is nothing to join).
    """
    if selection.position("train") != "inside":  # the chief does not train: there is nothing to join
        return _summary(cluster, "train is not among the selected stages: nothing to join")
    workdir = workdir.resolve()
    cache, lineage_path = StageCache(workdir / "cache"), workdir / "lineage.sqlite"
    started = time.time()
    artifacts: dict[str, Any] = {}
    for stage in STAGES:
        if stage.skip_reason and stage.skip_reason(config, artifacts):  # before train, only tune may be skipped
            continue
        key = stage_key(stage, config, artifacts, RunPlaces(workdir / "saved_models"))
        if stage.name != "train":
            artifacts[stage.name] = _wait_for(cache, lineage_path, stage.name, key.fingerprint, started)
            continue
        if cache.lookup("train", key.fingerprint) is not None and "train" not in selection.force:
            return _summary(cluster, "train is cached: the chief uses it, there is no training to join")
        with tempfile.TemporaryDirectory(prefix="worker-") as scratch:
            run_values = {"tensorboard_dir": Path(scratch) / "tensorboard",
                          "resume_dir": resume_dir(cache, "train", key.fingerprint)}
            trained = load_function(stage)(**stage_arguments(stage, config, artifacts, run_values, key.resolved),
                                           out_dir=Path(scratch) / "train")
        return _summary(cluster, f"trained with the chief: weights sha256 {trained.weights_sha256}",
                        trained.weights_sha256)
    raise AssertionError("the registry has no train stage")


def _wait_for(cache: StageCache, lineage_path: Path, stage: str, fingerprint: str, since: float) -> Any:
    """The chief's artifact of `stage`, once it is in the cache."""
    waited = 0.0
    while (artifact := cache.lookup(stage, fingerprint)) is None:
        if waited % HINT_SECONDS == 0:
            log.info("worker: waiting for the chief to finish stage %s (fingerprint %s)%s", stage, fingerprint[:12],
                     "" if not waited else "; if the chief has finished it, this worker computes another fingerprint: "
                     "every worker needs the same code, packages and data (the same paths on shared storage)")
        ended = _ended_before_training(lineage_path, since)
        if ended:
            raise UserError(f"the chief's run {ended['run_id']} ended before training ({ended['status']}: "
                            f"{ended['error'] or 'no error recorded'}); fix that and start every worker again")
        time.sleep(POLL_SECONDS)
        waited += POLL_SECONDS
    return artifact


def _ended_before_training(lineage_path: Path, since: float) -> dict[str, Any] | None:
    """The chief's run (the newest: only the chief writes runs), if it ended while this worker waited.

    Failed: it ended after `since`. Killed (seen only from the chief's host): it started at most
    STARTUP_SLACK seconds before `since`, so a run killed long ago is not taken for this one.
    """
    newest = newest_run(lineage_path) if lineage_path.exists() else None
    if newest and newest["status"] == "failed" and (newest["ended"] or 0) >= since:
        return newest
    if newest and newest["status"] == "killed" and newest["started"] >= since - STARTUP_SLACK:
        return newest
    return None


def _summary(cluster: Cluster, outcome: str, weights_sha256: str = "") -> dict[str, Any]:
    """What the CLI prints for a worker: no run of its own, so no stages or run folder."""
    name = f"{cluster.task_type} {cluster.task_index} of {cluster.num_workers} workers"
    return {"run_id": name, "status": "succeeded", "stages": [], "results": {"weights_sha256": weights_sha256},
            "summary": [f"{name}: {outcome}", "the chief evaluates, exports and writes the run folder"],
            "files": {}, "run_dir": "(none: only the chief writes runs)"}
