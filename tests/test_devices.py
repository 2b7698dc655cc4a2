"""This machine's devices: described without TensorFlow as TensorFlow would, and asked of it where a GPU may be."""

import json

import pytest

from components import devices as devices_module
from components.devices import Device, local_cpu, local_devices
from components.train_plan import choose_precision
from tests.conftest import run_python


def test_gpus_are_described_with_the_compute_capability_tensorflow_reports(monkeypatch):
    import tensorflow as tf

    gpus = ["gpu0", "gpu1"]
    details = {"gpu0": {"compute_capability": (8, 0)}, "gpu1": {}}
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: gpus if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda gpu: details[gpu])

    assert local_devices() == [Device("GPU", (8, 0)), Device("GPU", None), local_cpu()]
    assert choose_precision("auto", local_devices()) == "float32"  # one GPU of unknown capability


# In a fresh process: this machine's devices and plans described before TensorFlow is imported, then by it.
DESCRIBED_WITHOUT_AND_WITH_TENSORFLOW = """
import json, sys
from components.config import TrainConfig
from components.devices import gpu_may_be_visible, local_devices
from components.train_plan import plan_training

def describe():
    strategies = ("auto", "single", "mirrored")
    return [local_devices()] + [plan_training(TrainConfig(strategy=strategy)) for strategy in strategies]

before = describe()
loaded_before = "tensorflow" in sys.modules
import tensorflow
print(json.dumps({"same": before == describe(), "before": repr(before), "loaded_before": loaded_before,
                  "gpu_may_be_visible": gpu_may_be_visible()}))
"""


@pytest.mark.slow  # 7 s: TensorFlow started in a fresh process for each described device set
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
    cpuinfo = tmp_path / "cpuinfo"
    if flags is not None:
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert local_cpu(cpuinfo) == Device("CPU", bfloat16=expected)
