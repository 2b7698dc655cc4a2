"""Which precision policy to train in, decided from a plain description of the devices.

The decision is a pure function of `Device` values so tests can drive it with any GPU they
describe; `local_devices()` is the only part that asks TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from pipeline.errors import UserError

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
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
    if requested not in PRECISIONS:
        raise UserError(f"train.precision={requested!r} is not one of {', '.join(PRECISIONS)}")
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

