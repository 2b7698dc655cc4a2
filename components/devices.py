"""This machine's devices as TensorFlow would describe them, asking it only when it alone can tell.

`Device` is what the training decisions (`components/train_plan.py`) are made from, so tests drive
those with any GPUs they describe. `local_devices()` and `num_logical_devices()` import TensorFlow
only when it is loaded already or a GPU may be visible to it; otherwise they answer as a fresh
TensorFlow process on this machine would (just the CPU).
"""

from __future__ import annotations

import glob
import os
import shutil
import site
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Device:
    """A device as far as the training decisions care: its kind, a GPU's compute capability, and
    whether a CPU computes in bfloat16 natively."""

    kind: str  # "GPU" or "CPU"
    compute_capability: tuple[int, int] | None = None
    bfloat16: bool = False  # a CPU with AVX512_BF16 or AMX: oneDNN runs bfloat16 convolutions natively


# What shows, without TensorFlow, that it might find a GPU: NVIDIA's driver (its device files, its
# /proc entries, nvidia-smi), WSL's GPU bridge, AMD's ROCm driver. CUDA_VISIBLE_DEVICES can hide the
# NVIDIA ones; nothing in this list tells whether TensorFlow can use the GPU (its CUDA libraries).
NVIDIA_GPU_SIGNS = ("/dev/nvidia[0-9]*", "/proc/driver/nvidia/gpus/*", "/dev/dxg")
OTHER_GPU_SIGNS = ("/dev/kfd",)


def local_devices() -> list[Device]:
    """Describe this machine's GPUs (with compute capability) and its CPU, as TensorFlow sees them.

    Without importing TensorFlow (seconds) when it is not loaded yet and no GPU can be visible to it:
    then it would report just the CPU. Otherwise TensorFlow is asked, because only it knows which
    GPUs it can use (CUDA libraries installed, compute capability supported, devices set visible).
    """
    if not _needs_tensorflow():
        return [local_cpu()]
    import tensorflow as tf

    gpus = [
        Device("GPU", tf.config.experimental.get_device_details(gpu).get("compute_capability"))
        for gpu in tf.config.list_physical_devices("GPU")
    ]
    return gpus + [local_cpu()]


# CPU flags (Linux's /proc/cpuinfo names) of native bfloat16 arithmetic that oneDNN uses.
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def local_cpu(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> Device:
    """This machine's CPU, with whether it computes in bfloat16 natively (False where unknown)."""
    try:
        flags = next((line.partition(":")[2].split() for line in cpuinfo_path.read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        flags = []
    return Device("CPU", bfloat16=any(flag in flags for flag in BFLOAT16_CPU_FLAGS))


def num_logical_devices(kind: str) -> int:
    """How many logical devices of `kind` ("GPU" or "CPU") TensorFlow has in this process."""
    if not _needs_tensorflow():
        return int(kind == "CPU")  # what a fresh TensorFlow process without a GPU reports
    import tensorflow as tf

    return len(tf.config.list_logical_devices(kind))


def _needs_tensorflow() -> bool:
    """Whether only TensorFlow can describe the devices.

    It is loaded already (and may have been configured, e.g. with logical CPU devices), or this machine
    may have a GPU it could use.
    """
    return "tensorflow" in sys.modules or gpu_may_be_visible()


def gpu_may_be_visible() -> bool:
    """False only when TensorFlow certainly finds no GPU here: no GPU driver, no device plugin."""
    if _device_plugins_installed() or any(glob.glob(sign) for sign in OTHER_GPU_SIGNS):
        return True
    if _hides_every_gpu(os.environ.get("CUDA_VISIBLE_DEVICES")):
        return False
    return shutil.which("nvidia-smi") is not None or any(glob.glob(sign) for sign in NVIDIA_GPU_SIGNS)


def _hides_every_gpu(cuda_visible_devices: str | None) -> bool:
    """CUDA reads the list up to its first invalid entry: an empty list or one that starts with -1 hides all."""
    if cuda_visible_devices is None:
        return False
    first = cuda_visible_devices.split(",")[0].strip()
    return first == "" or first.startswith("-")


def _device_plugins_installed() -> bool:
    """Pluggable devices (tensorflow-metal, DirectML, ...), found where TensorFlow's import looks for them."""
    if os.environ.get("TF_PLUGGABLE_DEVICE_LIBRARY_PATH"):
        return True
    folders = [*getattr(site, "getsitepackages", list)(), site.getusersitepackages(),
               *(path for path in sys.path if "site-packages" in path)]
    return any(Path(folder, "tensorflow-plugins").exists() for folder in folders)
