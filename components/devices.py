"""Which precision policy and which distribution strategy to train with, decided from the devices.

The decisions are pure functions of `Device` values so tests can drive them with any GPUs they
describe; `local_devices()` and `make_strategy()` are the only parts that ask TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from components.config import TrainConfig

# Tensor cores, where float16 pays off, arrived with compute capability 7.0 (Volta).
MIN_FLOAT16_COMPUTE_CAPABILITY = (7, 0)


@dataclass(frozen=True)
class Device:
    """A device as far as the precision choice cares: its kind and, for GPUs, compute capability."""

    kind: str  # "GPU" or "CPU"
    compute_capability: tuple[int, int] | None = None


def choose_precision(requested: str, devices: Sequence[Device]) -> str:
    """Resolve `train.precision` to a Keras dtype policy name.

    `auto` picks mixed_float16 only when there are GPUs and all have compute capability >= 7.0;
    otherwise float32 (on CPUs float16 is emulated and slower). Explicit policies are kept as asked.
    """
    if requested != "auto":
        return requested
    gpus = [device for device in devices if device.kind == "GPU"]
    if gpus and all((d.compute_capability or (0, 0)) >= MIN_FLOAT16_COMPUTE_CAPABILITY for d in gpus):
        return "mixed_float16"
    return "float32"


def local_devices() -> list[Device]:
    """Describe this machine's GPUs (with compute capability) and its CPU."""
    import tensorflow as tf

    gpus = [
        Device("GPU", tf.config.experimental.get_device_details(gpu).get("compute_capability"))
        for gpu in tf.config.list_physical_devices("GPU")
    ]
    return gpus + [Device("CPU")]


@dataclass(frozen=True)
class StrategyPlan:
    """How to place training: one device, or data-parallel replicas on every device of one kind."""

    kind: str  # "single" or "mirrored"
    device_kind: str  # "GPU" or "CPU": what the mirrored replicas run on


def choose_strategy(requested: str, devices: Sequence[Device]) -> StrategyPlan:
    """Resolve `train.strategy`: `auto` mirrors over the GPUs when there are two or more.

    `mirrored` replicates over all GPUs, or over the CPU's logical devices when there is no GPU
    (which is how the multi-device path is exercised on a machine without one).
    """
    num_gpus = sum(device.kind == "GPU" for device in devices)
    device_kind = "GPU" if num_gpus else "CPU"
    if requested == "mirrored" or (requested == "auto" and num_gpus >= 2):
        return StrategyPlan("mirrored", device_kind)
    return StrategyPlan("single", device_kind)


def make_strategy(plan: StrategyPlan):
    """The tf.distribute strategy for `plan` (the default one for `single`)."""
    import tensorflow as tf

    if plan.kind == "single":
        return tf.distribute.get_strategy()
    return tf.distribute.MirroredStrategy([device.name for device in tf.config.list_logical_devices(plan.device_kind)])


@dataclass(frozen=True)
class TrainingPlan:
    """What `train.precision` and `train.strategy` resolved to on this machine, and the devices seen.

    Part of train's fingerprint: the same config trained on another machine is another model.
    """

    precision: str  # a Keras dtype policy name
    strategy: StrategyPlan
    devices: tuple[Device, ...]
    num_logical_devices: int  # of the strategy's device kind: the replicas of a mirrored run


def plan_training(config: TrainConfig, devices: Sequence[Device] | None = None) -> TrainingPlan:
    """Resolve precision and strategy for `devices` (this machine's when None)."""
    import tensorflow as tf

    devices = tuple(local_devices() if devices is None else devices)
    strategy = choose_strategy(config.strategy, devices)
    num_logical = len(tf.config.list_logical_devices(strategy.device_kind))
    return TrainingPlan(choose_precision(config.precision, devices), strategy, devices, num_logical)
