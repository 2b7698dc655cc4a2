"""What train's settings resolve to on this machine: precision, strategy, XLA, batch and prefetch.

Each decision is a small pure function of `Device` values (and the number of workers), so tests
drive them with any GPUs they describe; `plan_training` makes them for this machine's devices and its
`TF_CONFIG`. This module imports no TensorFlow: `components/devices.py` asks it only where it alone
can tell, and `components/strategy.py` makes the strategy chosen here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from components.cluster import TF_CONFIG_EXAMPLE, Cluster, this_cluster
from components.config import TrainConfig
from components.devices import Device, local_devices, num_logical_devices
from components.errors import UserError

# Tensor cores, where float16 pays off, arrived with compute capability 7.0 (Volta).
MIN_FLOAT16_COMPUTE_CAPABILITY = (7, 0)


@dataclass(frozen=True)
class StrategyPlan:
    """How to place training: one device, replicas on every device of one kind, or on several workers."""

    kind: str  # "single", "mirrored" or "multi_worker"
    device_kind: str  # "GPU" or "CPU": what the replicas run on
    num_workers: int = 1  # processes training together (multi_worker); the same on every worker


@dataclass(frozen=True)
class TrainingPlan:
    """What `train.precision` and `train.strategy` resolved to on this machine, and the devices seen.

    Part of train's fingerprint: the same config trained on another machine is another model.
    """

    precision: str  # a Keras dtype policy name
    strategy: StrategyPlan
    devices: tuple[Device, ...]
    num_logical_devices: int  # of the strategy's device kind: the replicas of a mirrored run (per worker)


def plan_training(config: TrainConfig, devices: Sequence[Device] | None = None,
                  cluster: Cluster | None = None) -> TrainingPlan:
    """Resolve precision and strategy for `devices` and `cluster` (this machine's and TF_CONFIG's when None).

    Raises:
        UserError: train.strategy=multi_worker without a TF_CONFIG naming the workers.
    """
    devices = tuple(local_devices() if devices is None else devices)
    cluster = this_cluster() if cluster is None else cluster
    if config.strategy == "multi_worker" and cluster.num_workers < 2:
        raise UserError("train.strategy=multi_worker needs the workers named in the TF_CONFIG environment "
                        f"variable, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}' (each worker its own index); "
                        "on one machine use train.strategy=mirrored")
    strategy = choose_strategy(config.strategy, devices, cluster.num_workers)
    return TrainingPlan(choose_precision(config.precision, devices), strategy, devices,
                        num_logical_devices(strategy.device_kind))


def choose_precision(requested: str, devices: Sequence[Device]) -> str:
    """Resolve `train.precision` to a Keras dtype policy name.

    `auto` picks mixed_float16 only when there are GPUs and all have compute capability >= 7.0;
    without GPUs, mixed_bfloat16 on a CPU with native bfloat16 instructions (measured 1.29x the
    images/s of float32 here, `bench/throughput.py`); otherwise float32 (a CPU emulates
    float16 and bfloat16 without them, slower). Explicit policies are kept as asked.
    """
    if requested != "auto":
        return requested
    gpus = [device for device in devices if device.kind == "GPU"]
    if gpus and all((d.compute_capability or (0, 0)) >= MIN_FLOAT16_COMPUTE_CAPABILITY for d in gpus):
        return "mixed_float16"
    if not gpus and any(device.kind == "CPU" and device.bfloat16 for device in devices):
        return "mixed_bfloat16"
    return "float32"


def choose_strategy(requested: str, devices: Sequence[Device], num_workers: int = 1) -> StrategyPlan:
    """Resolve `train.strategy`: `auto` mirrors over the GPUs when there are two or more.

    `mirrored` replicates over all GPUs, or over the CPU's logical devices when there is no GPU
    (which is how the multi-device path is exercised on a machine without one). `multi_worker`
    replicates over every device of that kind on each of `num_workers` workers.
    """
    num_gpus = sum(device.kind == "GPU" for device in devices)
    device_kind = "GPU" if num_gpus else "CPU"
    if requested == "multi_worker":
        return StrategyPlan("multi_worker", device_kind, num_workers)
    if requested == "mirrored" or (requested == "auto" and num_gpus >= 2):
        return StrategyPlan("mirrored", device_kind)
    return StrategyPlan("single", device_kind)


def choose_xla(requested: str, devices: Sequence[Device]) -> bool:
    """Resolve `train.xla`: `auto` compiles with XLA only on GPUs.

    On this project's CPU (2 cores, oneDNN) an XLA-compiled training step measured about 4x slower
    than TensorFlow's own kernels (`bench/throughput.py --levers`), so CPUs keep them.
    """
    if requested != "auto":
        return requested == "on"
    return any(device.kind == "GPU" for device in devices)


def scale_batch(batch_size: int, learning_rate: float, replicas: int) -> tuple[int, float]:
    """The global batch and peak learning rate for `replicas` data-parallel replicas.

    Each replica takes `batch_size` examples per step, so the global batch grows with the replicas;
    Adam's learning rate grows with its square root (the scaling rule for adaptive optimizers of
    Malladi et al., 2022), where SGD's would grow linearly.
    """
    return batch_size * replicas, learning_rate * replicas ** 0.5


def prefetch_device(plan: TrainingPlan) -> str | None:
    """Where training batches are prefetched to: the GPU of a single-GPU run, so copies overlap steps.

    Under MirroredStrategy, Keras distributes the dataset and each replica's batch is placed for it;
    on CPUs the batches already are where the step runs.
    """
    if plan.strategy.kind == "single" and plan.strategy.device_kind == "GPU":
        return "/GPU:0"
    return None
