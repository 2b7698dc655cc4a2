"""The precision policy decision, driven with described devices."""

import pytest

from components.devices import Device, StrategyPlan, choose_precision, choose_strategy, local_devices
from components.errors import UserError

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


def test_unknown_policy_is_a_user_error():
    with pytest.raises(UserError, match="train.precision='float16' is not one of auto, float32"):
        choose_precision("float16", [CPU])


def test_this_machine_is_described_with_its_cpu():
    devices = local_devices()
    assert devices[-1] == CPU
    assert all(d.kind == "GPU" and d.compute_capability for d in devices[:-1])


@pytest.mark.parametrize("requested, devices, expected", [
    ("auto", [CPU], StrategyPlan("single", "CPU")),
    ("auto", [Device("GPU", (8, 0)), CPU], StrategyPlan("single", "GPU")),
    ("auto", [Device("GPU", (8, 0)), Device("GPU", (8, 0)), CPU], StrategyPlan("mirrored", "GPU")),
    ("single", [Device("GPU", (8, 0)), Device("GPU", (8, 0)), CPU], StrategyPlan("single", "GPU")),
    ("mirrored", [CPU], StrategyPlan("mirrored", "CPU")),  # the CPU's logical devices: testable here
])
def test_strategy_choice(requested, devices, expected):
    assert choose_strategy(requested, devices) == expected


def test_unknown_strategy_is_a_user_error():
    with pytest.raises(UserError, match="train.strategy='tpu' is not one of auto, single, mirrored"):
        choose_strategy("tpu", [CPU])
