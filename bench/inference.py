"""Benchmark: batch-1 latency (p50, p99) and batch-256 throughput of an exported model, ONNX Runtime and SavedModel.

    python bench/inference.py                                  # exports the default digits model first
    python bench/inference.py saved_models/digits/1            # an existing version folder
    python bench/inference.py --repeats 3 --only onnx          # quicker; onnx | savedmodel

Every variant (a set of ONNX Runtime session options, a way to call the SavedModel, thread settings) is
measured in a fresh interpreter, so no thread pool, cache or setting of one variant reaches the next;
the variants take turns, `--repeats` rounds of them, and the table gives the median of the rounds (this
machine's timings vary up to 1.4× between runs). A round times, after a warm-up, every one of
`--calls` batch-1 calls with `time.perf_counter_ns` (numpy in, numpy out), then as many batch-256 calls
as fit in one second. Pixels are random 0..255 values; the figures do not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))

LARGE_BATCH = 256
SMALL_BATCHES = (8, 16, 32)  # where components.onnx_session.SINGLE_THREAD_MAX_BATCH was chosen
THROUGHPUT_SECONDS = 1.0
QUIET_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO_DIR)}


@dataclass(frozen=True)
class OnnxVariant:
    """One way to open and call an ONNX Runtime session."""

    name: str
    options: dict = field(default_factory=dict)  # SessionOptions attributes, e.g. {"intra_op_num_threads": 1}
    config: dict = field(default_factory=dict)  # add_session_config_entry keys and values
    call: str = "run"  # run | run_none (output names None) | ort_values (run_with_ort_values) | io_binding
    offline: str = ""  # a GraphOptimizationLevel name: load the model optimized offline at it, optimizing no more
    fixed_batch: bool = False  # batch axis fixed to 1 (add_free_dimension_override_by_name); no batch 256 then
    more_batches: tuple[int, ...] = ()  # throughput at these batch sizes too (where a thread pool starts to pay)
    batch_hint: int = 0  # > 0: open the session with components.onnx_session.onnx_session(path, batch_hint)


@dataclass(frozen=True)
class SavedModelVariant:
    """One way to load and call the SavedModel in a process with these TensorFlow settings."""

    name: str
    call: str = "signature"  # signature | constant (pre-made input) | restored (the tf.function) | concrete | jit
    threads: tuple[int, int] = (0, 0)  # tf.config.threading (inter_op, intra_op); 0 = TensorFlow's choice
    env: dict = field(default_factory=dict)  # set before TensorFlow is imported


ONE = {"intra_op_num_threads": 1}
NO_ONEDNN = {"TF_ENABLE_ONEDNN_OPTS": "0"}
ONNX_VARIANTS = (
    OnnxVariant("defaults (InferenceSession(path))", more_batches=SMALL_BATCHES),
    OnnxVariant("intra_op_num_threads=1", ONE, more_batches=SMALL_BATCHES),
    OnnxVariant("intra_op_num_threads=2", {"intra_op_num_threads": 2}),
    OnnxVariant("intra_op=2, allow_spinning=0", {"intra_op_num_threads": 2},
                {"session.intra_op.allow_spinning": "0"}),
    OnnxVariant("intra_op=1, ORT_PARALLEL, inter_op=2",
                {**ONE, "execution_mode": "ORT_PARALLEL", "inter_op_num_threads": 2}),
    OnnxVariant("intra_op=1, ORT_ENABLE_EXTENDED", {**ONE, "graph_optimization_level": "ORT_ENABLE_EXTENDED"}),
    OnnxVariant("intra_op=1, ORT_ENABLE_BASIC", {**ONE, "graph_optimization_level": "ORT_ENABLE_BASIC"}),
    OnnxVariant("intra_op=1, enable_mem_pattern=False", {**ONE, "enable_mem_pattern": False}),
    OnnxVariant("intra_op=1, enable_cpu_mem_arena=False", {**ONE, "enable_cpu_mem_arena": False}),
    OnnxVariant("intra_op=1, offline ORT_ENABLE_ALL model", ONE, offline="ORT_ENABLE_ALL"),
    OnnxVariant("intra_op=1, offline ORT_ENABLE_EXTENDED model", ONE, offline="ORT_ENABLE_EXTENDED"),
    OnnxVariant("intra_op=1, batch axis fixed to 1", ONE, fixed_batch=True),
    OnnxVariant("intra_op=1, run(None, ...)", ONE, call="run_none"),
    OnnxVariant("intra_op=1, run_with_ort_values, OrtValue input", ONE, call="ort_values"),
    OnnxVariant("intra_op=1, IOBinding, bound input and output", ONE, call="io_binding"),
    OnnxVariant("chosen: onnx_session(path, batch_hint=1)", batch_hint=1),
    OnnxVariant(f"chosen: onnx_session(path, batch_hint={LARGE_BATCH})", batch_hint=LARGE_BATCH),
)
SAVED_MODEL_VARIANTS = (
    SavedModelVariant('signatures["serving_default"], numpy input'),
    SavedModelVariant("signature, pre-made tf.constant", "constant"),
    SavedModelVariant("restored tf.function, pre-made tf.constant", "restored"),
    SavedModelVariant("its concrete function, pre-made tf.constant", "concrete"),
    SavedModelVariant("signature, inter_op=1", threads=(1, 0)),
    SavedModelVariant("signature, intra_op=1", threads=(0, 1)),
    SavedModelVariant("signature, inter_op=1, intra_op=1", threads=(1, 1)),
    SavedModelVariant("signature, TF_ENABLE_ONEDNN_OPTS=0", env=NO_ONEDNN),
    SavedModelVariant("tf.function(jit_compile=True) around it, concrete", "jit"),
    SavedModelVariant("concrete, inter_op=1, intra_op=1, oneDNN off", "concrete", (1, 1), NO_ONEDNN),
    SavedModelVariant("jit concrete, inter_op=1, intra_op=1", "jit", (1, 1)),
    SavedModelVariant("jit concrete, inter_op=1, intra_op=1, oneDNN off", "jit", (1, 1), NO_ONEDNN),
)


# ---- one measurement, in a fresh interpreter -------------------------------------------------------------

def time_calls(predict: Callable[[], object], num_calls: int) -> dict[str, float]:
    """p50 and p99 in µs of `num_calls` calls, each timed alone, after a tenth as many warm-up calls."""
    for _ in range(max(num_calls // 10, 20)):
        predict()
    nanoseconds = np.empty(num_calls, np.int64)
    for index in range(num_calls):
        start = time.perf_counter_ns()
        predict()
        nanoseconds[index] = time.perf_counter_ns() - start
    p50, p99 = np.percentile(nanoseconds, [50, 99]) / 1000
    return {"p50_us": float(p50), "p99_us": float(p99)}


def images_per_second(predict: Callable[[], object], batch_size: int) -> float:
    """Images a second over as many calls as fit in THROUGHPUT_SECONDS, after 10 warm-up calls."""
    for _ in range(10):
        predict()
    num_calls, start = 0, time.perf_counter_ns()
    while (elapsed := time.perf_counter_ns() - start) < THROUGHPUT_SECONDS * 1e9:
        predict()
        num_calls += 1
    return batch_size * num_calls / elapsed * 1e9


def random_pixels(batch_size: int, image_shape: list[int]) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (batch_size, *image_shape)).astype(np.float32)


def measure_onnx(variant: OnnxVariant, version_dir: Path, num_calls: int, offline_dir: Path) -> dict[str, float]:
    """Open the session as `variant` says (timing it) and time its batch-1 calls and batch-256 throughput.

    An offline-optimized model is read from `offline_dir`, written there by another process: the first
    session of a process also pays for ONNX Runtime's start-up, which load_ms includes for every variant.
    """
    onnx_path = offline_dir / f"{variant.offline}.onnx" if variant.offline else version_dir / "model.onnx"
    start = time.perf_counter_ns()
    session = open_onnx_session(variant, onnx_path)
    result = {"load_ms": (time.perf_counter_ns() - start) / 1e6}
    image_shape = session.get_inputs()[0].shape[1:]
    result |= time_calls(onnx_caller(session, variant.call, random_pixels(1, image_shape)), num_calls)
    if not variant.fixed_batch:
        large = random_pixels(LARGE_BATCH, image_shape)
        result["images_per_s"] = images_per_second(onnx_caller(session, "run", large), LARGE_BATCH)
    for batch_size in variant.more_batches:
        pixels = random_pixels(batch_size, image_shape)
        result[f"images_per_s@{batch_size}"] = images_per_second(onnx_caller(session, "run", pixels), batch_size)
    return result


def open_onnx_session(variant: OnnxVariant, onnx_path: Path):
    import onnxruntime

    if variant.batch_hint:
        from components.onnx_session import onnx_session

        return onnx_session(onnx_path, variant.batch_hint)
    options = onnxruntime.SessionOptions()
    for key, value in variant.options.items():
        enum = {"execution_mode": onnxruntime.ExecutionMode,
                "graph_optimization_level": onnxruntime.GraphOptimizationLevel}.get(key)
        setattr(options, key, getattr(enum, value) if enum else value)
    for key, value in variant.config.items():
        options.add_session_config_entry(key, value)
    if variant.offline:  # already optimized: optimizing it again at load is what offline saves
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    if variant.fixed_batch:
        options.add_free_dimension_override_by_name("batch", 1)
    return onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def optimize_offline(onnx_path: Path, offline_dir: Path) -> None:
    """Write `offline_dir/<level>.onnx`: the graph ONNX Runtime optimizes `onnx_path` into at each offline level."""
    import onnxruntime

    for level in {variant.offline for variant in ONNX_VARIANTS if variant.offline}:
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, level)
        options.optimized_model_filepath = str(offline_dir / f"{level}.onnx")
        options.log_severity_level = 3  # not the warning that an ORT_ENABLE_ALL file suits only this CPU
        onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def onnx_caller(session, call: str, pixels: np.ndarray) -> Callable[[], np.ndarray]:
    """A no-argument call of `session` on `pixels` that returns the probabilities as numpy."""
    import onnxruntime

    if call == "run":
        return lambda: session.run(["probabilities"], {"pixels": pixels})[0]
    if call == "run_none":
        return lambda: session.run(None, {"pixels": pixels})[0]
    value = onnxruntime.OrtValue.ortvalue_from_numpy(pixels)
    if call == "ort_values":
        return lambda: session.run_with_ort_values(["probabilities"], {"pixels": value})[0].numpy()
    binding, output = session.io_binding(), onnxruntime.OrtValue.ortvalue_from_shape_and_type(
        [len(pixels), session.get_outputs()[0].shape[1]], np.float32)
    binding.bind_ortvalue_input("pixels", value)
    binding.bind_ortvalue_output("probabilities", output)
    return lambda: (session.run_with_iobinding(binding), output.numpy())[1]


def measure_saved_model(variant: SavedModelVariant, version_dir: Path, num_calls: int) -> dict[str, float]:
    """Load the SavedModel with `variant`'s settings (timing it) and time batch-1 calls and batch-256 throughput."""
    os.environ.update(variant.env)
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(variant.threads[0])
    tf.config.threading.set_intra_op_parallelism_threads(variant.threads[1])
    start = time.perf_counter_ns()
    model = tf.saved_model.load(str(version_dir))
    result = {"load_ms": (time.perf_counter_ns() - start) / 1e6}
    image_shape = model.signatures["serving_default"].structured_input_signature[1]["pixels"].shape[1:]
    predict = saved_model_function(model, variant.call, image_shape)
    result |= time_calls(saved_model_caller(predict, variant.call, random_pixels(1, image_shape)), num_calls)
    large = random_pixels(LARGE_BATCH, image_shape)
    result["images_per_s"] = images_per_second(saved_model_caller(predict, variant.call, large), LARGE_BATCH)
    return result


def saved_model_function(model, call: str, image_shape) -> Callable:
    """The function a call style calls: a signature (keyword `pixels`) or one that takes the tensor itself."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, *image_shape], tf.float32)
    if call in ("signature", "constant"):
        return lambda pixels: model.signatures["serving_default"](pixels=pixels)
    if call == "restored":
        return model.serving_default
    if call == "concrete":
        return model.serving_default.get_concrete_function(spec)
    return tf.function(model.serving_default, jit_compile=True).get_concrete_function(spec)


def saved_model_caller(predict: Callable, call: str, pixels: np.ndarray) -> Callable[[], np.ndarray]:
    """A no-argument call of `predict` on `pixels` that returns the probabilities as numpy."""
    import tensorflow as tf

    if call == "signature":  # the README's way: a numpy batch made a tensor at every call
        return lambda: predict(tf.constant(pixels))["probabilities"].numpy()
    tensor = tf.constant(pixels)
    return lambda: predict(tensor)["probabilities"].numpy()


def measure_in_this_process(kind: str, name: str, version_dir: Path, num_calls: int,
                            offline_dir: Path) -> dict[str, float]:
    if kind == "onnx":
        return measure_onnx(next(v for v in ONNX_VARIANTS if v.name == name), version_dir, num_calls, offline_dir)
    return measure_saved_model(next(v for v in SAVED_MODEL_VARIANTS if v.name == name), version_dir, num_calls)


# ---- the rounds, the table -------------------------------------------------------------------------------

def measure_in_fresh_process(kind: str, name: str, version_dir: Path, num_calls: int,
                             offline_dir: Path) -> dict[str, float]:
    variant = {v.name: v for v in (*ONNX_VARIANTS, *SAVED_MODEL_VARIANTS)}[name]
    env = {**QUIET_ENV, **getattr(variant, "env", {})}
    result = subprocess.run([sys.executable, __file__, "--measure", kind, name, "--calls", str(num_calls),
                             "--offline-dir", str(offline_dir), str(version_dir)],
                            env=env, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"{kind} {name!r} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_rounds(variants: list[tuple[str, str, int]], version_dir: Path, repeats: int,
                   offline_dir: Path) -> dict[str, list[dict]]:
    """Each variant `repeats` times, taking turns, so a change in the machine's load falls on all of them."""
    results: dict[str, list[dict]] = {name: [] for _, name, _ in variants}
    for round_number in range(1, repeats + 1):
        for kind, name, num_calls in variants:
            results[name].append(measure_in_fresh_process(kind, name, version_dir, num_calls, offline_dir))
            print(f"round {round_number}/{repeats}  {kind:<10} {name:<50} "
                  f"{json.dumps({k: round(v, 1) for k, v in results[name][-1].items()})}", flush=True)
    return results


def median_of(rounds: list[dict], key: str, spec: str) -> str:
    values = [result[key] for result in rounds if key in result]
    return format(statistics.median(values), spec) if values else "—"


def median_row(kind: str, name: str, rounds: list[dict]) -> str:
    spread = [result["p50_us"] for result in rounds]
    return (f"| {kind} | {name} | {median_of(rounds, 'p50_us', ',.1f')} ({min(spread):,.1f}–{max(spread):,.1f}) "
            f"| {median_of(rounds, 'p99_us', ',.1f')} | {median_of(rounds, 'images_per_s', ',.0f')} "
            f"| {median_of(rounds, 'load_ms', ',.1f')} |")


def print_tables(variants: list[tuple[str, str, int]], results: dict[str, list[dict]], load: str) -> None:
    print(f"\nmedians of {len(next(iter(results.values())))} rounds; load average {load}")
    print(f"| runtime | variant | batch-1 p50 µs (min–max) | batch-1 p99 µs | batch-{LARGE_BATCH} images/s "
          "| load ms |\n|---|---|---|---|---|---|")
    for kind, name, _ in variants:
        print(median_row({"onnx": "ONNX Runtime", "savedmodel": "SavedModel"}[kind], name, results[name]))
    by_batch = [variant for variant in ONNX_VARIANTS if variant.more_batches and variant.name in results]
    if by_batch:
        print(f"\n| ONNX Runtime, images/s at batch | {' | '.join(map(str, (*SMALL_BATCHES, LARGE_BATCH)))} |\n"
              + "|---" * (len(SMALL_BATCHES) + 2) + "|")
    for variant in by_batch:
        rounds = results[variant.name]
        cells = [median_of(rounds, f"images_per_s@{size}", ",.0f") for size in SMALL_BATCHES]
        print(f"| {variant.name} | {' | '.join(cells)} | {median_of(rounds, 'images_per_s', ',.0f')} |")


def export_default_model(workdir: Path) -> Path:
    """Run the default pipeline into `workdir` and return its digits version folder."""
    subprocess.run([sys.executable, "-m", "pipeline.run", "--workdir", str(workdir)], cwd=REPO_DIR,
                   env=QUIET_ENV, check=True, capture_output=True)
    return workdir / "saved_models" / "digits" / "1"


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version_dir", type=Path, nargs="?", help="default: export the default digits model first")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of every variant (default 5)")
    parser.add_argument("--only", choices=("onnx", "savedmodel"), help="measure one runtime")
    parser.add_argument("--calls", type=int, default=0, help="timed batch-1 calls (default 5000 ORT, 2000 TF)")
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--offline-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_in_this_process(*args.measure, args.version_dir, args.calls, args.offline_dir)))
        return
    variants = [(kind, variant.name, args.calls or calls) for kind, group, calls in
                (("onnx", ONNX_VARIANTS, 5000), ("savedmodel", SAVED_MODEL_VARIANTS, 2000))
                if args.only in (None, kind) for variant in group]
    with tempfile.TemporaryDirectory() as tmp:
        version_dir = (args.version_dir or export_default_model(Path(tmp))).resolve()
        optimize_offline(version_dir / "model.onnx", Path(tmp))
        load_before = load_average()
        results = measure_rounds(variants, version_dir, args.repeats, Path(tmp))
    print_tables(variants, results, f"{load_before} before, {load_average()} after")


if __name__ == "__main__":
    main()
