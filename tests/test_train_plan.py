"""What train's settings resolve to, driven with described devices and clusters: precision, strategy, XLA,
the global batch, prefetching, and the plan that gathers them."""

import math

import pytest

from components.cluster import Cluster
from components.config import TrainConfig
from components.devices import Device
from components.errors import UserError
from components.train_plan import (
    StrategyPlan,
    TrainingPlan,
    choose_precision,
    choose_strategy,
    choose_xla,
    plan_training,
    prefetch_device,
    scale_batch,
)

CPU = Device("CPU")
TWO_GPUS = [Device("GPU", (8, 0)), Device("GPU", (8, 0)), CPU]


@pytest.mark.parametrize("devices, expected", [
    ([Device("GPU", (6, 1)), CPU], "float32"),  # Pascal: no tensor cores
    ([Device("GPU", (7, 0)), CPU], "mixed_float16"),  # Volta, the first with tensor cores
    ([Device("GPU", (8, 0)), CPU], "mixed_float16"),  # Ampere
    ([Device("GPU", (9, 0)), CPU], "mixed_float16"),  # Hopper
    ([CPU], "float32"),
    ([Device("GPU", (8, 0)), Device("GPU", (6, 1)), CPU], "float32"),  # the slowest GPU decides
    ([Device("GPU", None), CPU], "float32"),  # unknown capability: stay safe
    ([Device("CPU", bfloat16=True)], "mixed_bfloat16"),  # AVX512_BF16 or AMX
    ([Device("GPU", (8, 0)), Device("CPU", bfloat16=True)], "mixed_float16"),  # the GPU trains
    ([Device("GPU", (6, 1)), Device("CPU", bfloat16=True)], "float32"),  # the GPU trains, without tensor cores
])
def test_auto_picks_float16_only_on_gpus_with_tensor_cores(devices, expected):
    assert choose_precision("auto", devices) == expected


@pytest.mark.parametrize("requested", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_explicit_policies_are_kept(requested):
    assert choose_precision(requested, [CPU]) == requested


@pytest.mark.parametrize("requested, devices, num_workers, expected", [
    ("auto", [CPU], 1, StrategyPlan("single", "CPU")),
    ("auto", [Device("GPU", (8, 0)), CPU], 1, StrategyPlan("single", "GPU")),
    ("auto", TWO_GPUS, 1, StrategyPlan("mirrored", "GPU")),
    ("single", TWO_GPUS, 1, StrategyPlan("single", "GPU")),
    ("mirrored", [CPU], 1, StrategyPlan("mirrored", "CPU")),  # the CPU's logical devices: testable here
    ("multi_worker", [CPU], 2, StrategyPlan("multi_worker", "CPU", 2)),
    ("multi_worker", TWO_GPUS, 4, StrategyPlan("multi_worker", "GPU", 4)),
    ("auto", TWO_GPUS, 3, StrategyPlan("mirrored", "GPU")),  # workers in TF_CONFIG alone ask for nothing more
])
def test_strategy_choice(requested, devices, num_workers, expected):
    assert choose_strategy(requested, devices, num_workers) == expected


def test_xla_only_on_gpus_unless_asked():
    cpu, gpu = [CPU], [Device("GPU", (8, 0)), CPU]
    assert choose_xla("auto", cpu) is False and choose_xla("auto", gpu) is True
    assert choose_xla("on", cpu) is True and choose_xla("off", gpu) is False


@pytest.mark.parametrize("replicas", [1, 2, 4, 8])
def test_the_global_batch_grows_with_the_replicas_and_adams_rate_with_its_root(replicas):
    global_batch, rate = scale_batch(64, 1e-3, replicas)
    assert global_batch == 64 * replicas and rate == pytest.approx(1e-3 * math.sqrt(replicas))


def test_batches_are_prefetched_to_a_single_gpu_only():
    def plan(kind, device_kind):
        return TrainingPlan("float32", StrategyPlan(kind, device_kind), (Device(device_kind),), 1)

    assert prefetch_device(plan("single", "GPU")) == "/GPU:0"
    assert prefetch_device(plan("mirrored", "GPU")) is None and prefetch_device(plan("single", "CPU")) is None


def test_the_plan_records_what_auto_resolved_to_on_described_devices():
    plan = plan_training(TrainConfig(), TWO_GPUS)
    assert plan.precision == "mixed_float16" and plan.strategy == StrategyPlan("mirrored", "GPU")
    assert plan_training(TrainConfig(), [CPU]).precision == "float32"


def test_multi_worker_plans_every_workers_devices_and_needs_a_cluster():
    config = TrainConfig(strategy="multi_worker")
    chief = plan_training(config, [Device("GPU", (8, 0)), CPU], Cluster(4, "worker", 0, True))
    other = plan_training(config, [Device("GPU", (8, 0)), CPU], Cluster(4, "worker", 3, False))
    assert chief == other  # the task index is not part of the plan (the train fingerprint, the resume folder)
    assert chief.strategy == StrategyPlan("multi_worker", "GPU", 4)
    with pytest.raises(UserError, match="needs the workers named in the TF_CONFIG"):
        plan_training(config, [CPU], Cluster(1, "worker", 0, True))
    assert plan_training(TrainConfig(strategy="single"), [CPU], Cluster(3, "worker", 1, False)).strategy == \
        StrategyPlan("single", "CPU")  # TF_CONFIG alone asks for nothing
