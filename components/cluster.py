"""This process's place among the workers `TF_CONFIG` lists, read without TensorFlow."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from components.errors import UserError


@dataclass(frozen=True)
class Cluster:
    """This process's place among the workers `TF_CONFIG` lists: one worker, the chief, when it is unset."""

    num_workers: int
    task_type: str  # "chief" or "worker"
    task_index: int
    is_chief: bool  # the one that writes: the "chief" task, or worker 0 when no task is called chief


TF_CONFIG_EXAMPLE = '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}'


def read_cluster(tf_config: str | None) -> Cluster:
    """Parse `TF_CONFIG` (tf.distribute's standard variable) the way MultiWorkerMirroredStrategy reads it.

    Raises:
        UserError: not JSON, no `cluster`/`task`, a task type other than chief or worker, or an index
            outside its list.
    """
    if not tf_config:
        return Cluster(1, "worker", 0, True)
    try:
        parsed = json.loads(tf_config)
        cluster, task = parsed["cluster"], parsed["task"]
        task_type, task_index = task["type"], int(task["index"])
        tasks = {name: list(cluster.get(name, [])) for name in ("chief", "worker")}
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise UserError(f"TF_CONFIG cannot be read ({type(error).__name__}: {error}); set it like "
                        f"{TF_CONFIG_EXAMPLE}") from None
    if task_type not in tasks or not 0 <= task_index < len(tasks[task_type]):
        raise UserError(f"TF_CONFIG's task {task_type!r} {task_index} is not in its cluster "
                        f"({', '.join(f'{len(v)} {k}' for k, v in tasks.items())}); this pipeline runs chief "
                        "and worker tasks: give each process its own index in the list")
    is_chief = task_type == "chief" or (task_type == "worker" and task_index == 0 and not tasks["chief"])
    return Cluster(len(tasks["chief"]) + len(tasks["worker"]), task_type, task_index, is_chief)


def this_cluster() -> Cluster:
    """This process's `read_cluster(TF_CONFIG)`."""
    return read_cluster(os.environ.get("TF_CONFIG"))
