"""The tf.distribute strategy a training plan asks for, made (one MultiWorkerMirroredStrategy a process).

Which strategy is a decision of `components/train_plan.py` (`choose_strategy`, a pure function of the
devices). This module makes it, so it is the one that needs TensorFlow: imported inside the functions,
because `pipeline.workers` imports it for every run and a fully cached run loads no TensorFlow.
"""

from __future__ import annotations

import functools

from components.errors import UserError
from components.train_plan import StrategyPlan


def make_strategy(plan: StrategyPlan):
    """The tf.distribute strategy for `plan` (the default one for `single`).

    A process has one MultiWorkerMirroredStrategy, made the first time it is asked for: it must exist
    before TensorFlow runs its first operation, so the orchestrator asks for it before the first stage.

    Raises:
        UserError: a multi_worker strategy asked for after TensorFlow has started running.
    """
    import tensorflow as tf

    if plan.kind == "multi_worker":
        return _multi_worker_strategy()
    if plan.kind == "single":
        return tf.distribute.get_strategy()
    return tf.distribute.MirroredStrategy([device.name for device in tf.config.list_logical_devices(plan.device_kind)])


@functools.cache
def _multi_worker_strategy():
    import tensorflow as tf

    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as error:
        raise UserError(f"train.strategy=multi_worker: {error}; start it in a fresh process (python -m "
                        "pipeline.run, or pipeline.run() before anything else uses TensorFlow)") from None
