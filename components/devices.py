"""Which precision policy and which distribution strategy to train with, decided from the devices.

The decisions are pure functions of `Device` values so tests can drive them with any GPUs they
describe; `local_devices()`, `num_logical_devices()` and `make_strategy()` are the only parts that ask
TensorFlow, and the first two only when they cannot know its answer without it.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import site
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from components.config import TrainConfig
from components.errors import UserError

# Tensor cores, where float16 pays off, arrived with compute capability 7.0 (Volta).
MIN_FLOAT16_COMPUTE_CAPABILITY = (7, 0)


@dataclass(frozen=True)
class Device:
    """A device as far as the precision choice cares: its kind, a GPU's compute capability, and
    whether a CPU computes in bfloat16 natively."""

    kind: str  # "GPU" or "CPU"
    compute_capability: tuple[int, int] | None = None
    bfloat16: bool = False  # a CPU with AVX512_BF16 or AMX: oneDNN runs bfloat16 convolutions natively


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


@dataclass(frozen=True)
class StrategyPlan:
    """How to place training: one device, replicas on every device of one kind, or on several workers."""

    kind: str  # "single", "mirrored" or "multi_worker"
    device_kind: str  # "GPU" or "CPU": what the replicas run on
    num_workers: int = 1  # processes training together (multi_worker); the same on every worker


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
