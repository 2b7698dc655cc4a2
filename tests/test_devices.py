"""The precision policy decision, driven with described devices; this machine's devices described without TF."""

import json

import pytest

from components import devices as devices_module
from components.devices import Device, StrategyPlan, choose_precision, choose_strategy, local_devices
from tests.conftest import run_python

CPU = Device("CPU")


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


def test_gpus_are_described_with_the_compute_capability_tensorflow_reports(monkeypatch):
    import tensorflow as tf

    gpus = ["gpu0", "gpu1"]
    details = {"gpu0": {"compute_capability": (8, 0)}, "gpu1": {}}
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: gpus if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda gpu: details[gpu])
    from components.devices import local_cpu

    assert local_devices() == [Device("GPU", (8, 0)), Device("GPU", None), local_cpu()]
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


# In a fresh process: this machine's devices and plans described before TensorFlow is imported, then by it.
DESCRIBED_WITHOUT_AND_WITH_TENSORFLOW = """
import json, sys
from components.config import TrainConfig
from components.devices import gpu_may_be_visible, local_devices, plan_training

def describe():
    strategies = ("auto", "single", "mirrored")
    return [local_devices()] + [plan_training(TrainConfig(strategy=strategy)) for strategy in strategies]

before = describe()
loaded_before = "tensorflow" in sys.modules
import tensorflow
print(json.dumps({"same": before == describe(), "before": repr(before), "loaded_before": loaded_before,
                  "gpu_may_be_visible": gpu_may_be_visible()}))
"""


def test_devices_described_without_tensorflow_are_what_tensorflow_reports():
    result = run_python(DESCRIBED_WITHOUT_AND_WITH_TENSORFLOW)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["same"], found["before"]  # the same TrainingPlan, so the same train fingerprint
    assert found["loaded_before"] == found["gpu_may_be_visible"]  # TensorFlow asked only where a GPU may be


@pytest.mark.parametrize("signs, cuda_visible_devices, expected", [
    ((), None, False),
    (("nvidia_device",), None, True),
    (("nvidia_device",), "0", True),
    (("nvidia_device",), "-1", False),  # CUDA hides every GPU: TensorFlow sees none
    (("nvidia_device",), "", False),
    (("nvidia-smi",), None, True),
    (("nvidia-smi",), "-1", False),
    (("rocm_device",), "-1", True),  # not NVIDIA's: CUDA_VISIBLE_DEVICES does not hide it
])
def test_a_gpu_may_be_visible_unless_nothing_shows_one(monkeypatch, tmp_path, signs, cuda_visible_devices, expected):
    for name in signs:
        (tmp_path / name).touch()
    monkeypatch.setattr(devices_module, "NVIDIA_GPU_SIGNS", (str(tmp_path / "nvidia_device"),))
    monkeypatch.setattr(devices_module, "OTHER_GPU_SIGNS", (str(tmp_path / "rocm_device"),))
    monkeypatch.setattr(devices_module.shutil, "which",
                        lambda name: str(tmp_path / name) if (tmp_path / name).exists() else None)
    monkeypatch.setattr(devices_module, "_device_plugins_installed", lambda: False)
    if cuda_visible_devices is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cuda_visible_devices)
    assert devices_module.gpu_may_be_visible() is expected


@pytest.mark.parametrize("flags, expected", [
    ("fpu sse avx2 avx512f avx512_bf16 fma", True),
    ("fpu sse avx2 amx_bf16 amx_tile", True),
    ("fpu sse avx2 avx512f avx512_vnni", False),  # AVX-512 without bfloat16
    (None, False),  # no /proc/cpuinfo (not Linux): unknown, so float32
])
def test_the_cpu_is_described_with_native_bfloat16_from_its_flags(tmp_path, flags, expected):
    from components.devices import local_cpu

    cpuinfo = tmp_path / "cpuinfo"
    if flags is not None:
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert local_cpu(cpuinfo) == Device("CPU", bfloat16=expected)


# TF_CONFIG, as tf.distribute defines it: who is chief, how many workers, and every way to get it wrong.
TWO_WORKERS = {"worker": ["a:1", "b:2"]}


@pytest.mark.parametrize("tf_config, expected", [
    (None, (1, "worker", 0, True)),
    ("", (1, "worker", 0, True)),
    (json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker", "index": 0}}), (2, "worker", 0, True)),
    (json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker", "index": 1}}), (2, "worker", 1, False)),
    (json.dumps({"cluster": {"chief": ["c:0"], **TWO_WORKERS}, "task": {"type": "chief", "index": 0}}),
     (3, "chief", 0, True)),
    (json.dumps({"cluster": {"chief": ["c:0"], **TWO_WORKERS}, "task": {"type": "worker", "index": 0}}),
     (3, "worker", 0, False)),  # with a chief task, worker 0 is an ordinary worker
    (json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker", "index": "1"}}), (2, "worker", 1, False)),
])
def test_tf_config_says_how_many_workers_and_which_is_chief(tf_config, expected):
    from components.devices import Cluster, read_cluster

    assert read_cluster(tf_config) == Cluster(*expected)


@pytest.mark.parametrize("tf_config, words", [
    ("{not json", "cannot be read"),
    ("[]", "cannot be read"),
    (json.dumps({"cluster": TWO_WORKERS}), "cannot be read"),  # no task
    (json.dumps({"task": {"type": "worker", "index": 0}}), "cannot be read"),  # no cluster
    (json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker"}}), "cannot be read"),
    (json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker", "index": "x"}}), "cannot be read"),
    (json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker", "index": 2}}), "is not in its cluster"),
    (json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker", "index": -1}}), "is not in its cluster"),
    (json.dumps({"cluster": TWO_WORKERS, "task": {"type": "ps", "index": 0}}), "is not in its cluster"),
    (json.dumps({"cluster": TWO_WORKERS, "task": {"type": "chief", "index": 0}}), "is not in its cluster"),
])
def test_a_bad_tf_config_is_one_clear_error(tf_config, words):
    from components.devices import read_cluster
    from components.errors import UserError

    with pytest.raises(UserError, match=words) as raised:
        read_cluster(tf_config)
    assert "\n" not in str(raised.value) and "TF_CONFIG" in str(raised.value)


def test_multi_worker_plans_every_workers_devices_and_needs_a_cluster():
    from components.config import TrainConfig
    from components.devices import Cluster, plan_training
    from components.errors import UserError

    config = TrainConfig(strategy="multi_worker")
    chief = plan_training(config, [Device("GPU", (8, 0)), CPU], Cluster(4, "worker", 0, True))
    other = plan_training(config, [Device("GPU", (8, 0)), CPU], Cluster(4, "worker", 3, False))
    assert chief == other  # the task index is not part of the plan (the train fingerprint, the resume folder)
    assert chief.strategy == StrategyPlan("multi_worker", "GPU", 4)
    assert choose_strategy("multi_worker", [CPU], 2) == StrategyPlan("multi_worker", "CPU", 2)
    with pytest.raises(UserError, match="needs the workers named in the TF_CONFIG"):
        plan_training(config, [CPU], Cluster(1, "worker", 0, True))
    assert plan_training(TrainConfig(strategy="single"), [CPU], Cluster(3, "worker", 1, False)).strategy == \
        StrategyPlan("single", "CPU")  # TF_CONFIG alone asks for nothing
