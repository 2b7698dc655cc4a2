"""The precision policy decision, driven with described devices."""

import pytest

from components.devices import Device, StrategyPlan, choose_precision, choose_strategy, local_devices

CPU = Device("CPU")


@pytest.mark.parametrize("devices, expected", [
    ([Device("GPU", (6, 1)), CPU], "float32"),  # Pascal: no tensor cores
    ([Device("GPU", (7, 0)), CPU], "mixed_float16"),  # Volta, the first with tensor cores
    ([Device("GPU", (8, 0)), CPU], "mixed_float16"),  # Ampere
    ([Device("GPU", (9, 0)), CPU], "mixed_float16"),  # Hopper
    ([CPU], "float32"),
    ([Device("GPU", (8, 0)), Device("GPU", (6, 1)), CPU], "float32"),  # the slowest GPU decides
    ([Device("GPU", None), CPU], "float32"),  # unknown capability: stay safe
])
def test_auto_picks_float16_only_on_gpus_with_tensor_cores(devices, expected):
    assert choose_precision("auto", devices) == expected


@pytest.mark.parametrize("requested", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_explicit_policies_are_kept(requested):
    assert choose_precision(requested, [CPU]) == requested



def test_gpus_are_described_with_the_compute_capability_tensorflow_reports(monkeypatch):
    import tensorflow as tf

    gpus = ["gpu0", "gpu1"]
    details = {"gpu0": {"compute_capability": (8, 0)}, "gpu1": {}}
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: gpus if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda gpu: details[gpu])
    assert local_devices() == [Device("GPU", (8, 0)), Device("GPU", None), CPU]
    assert choose_precision("auto", local_devices()) == "float32"  # one GPU of unknown capability


def test_the_plan_records_what_auto_resolved_to_on_described_devices():
    from components.config import TrainConfig
    from components.devices import plan_training

    plan = plan_training(TrainConfig(), [Device("GPU", (8, 0)), Device("GPU", (8, 0)), CPU])
    assert plan.precision == "mixed_float16" and plan.strategy == StrategyPlan("mirrored", "GPU")
    assert plan_training(TrainConfig(), [CPU]).precision == "float32"


@pytest.mark.parametrize("requested, devices, expected", [
    ("auto", [CPU], StrategyPlan("single", "CPU")),
    ("auto", [Device("GPU", (8, 0)), CPU], StrategyPlan("single", "GPU")),
    ("auto", [Device("GPU", (8, 0)), Device("GPU", (8, 0)), CPU], StrategyPlan("mirrored", "GPU")),
    ("single", [Device("GPU", (8, 0)), Device("GPU", (8, 0)), CPU], StrategyPlan("single", "GPU")),
    ("mirrored", [CPU], StrategyPlan("mirrored", "CPU")),  # the CPU's logical devices: testable here
])
def test_strategy_choice(requested, devices, expected):
    assert choose_strategy(requested, devices) == expected

