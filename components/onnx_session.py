"""Running an exported `model.onnx`: the ONNX Runtime session options that measured fastest here.

Consumers (export's parity check, and later a `predict` CLI and an HTTP server) open a session with
`onnx_session` instead of `onnxruntime.InferenceSession` so that they all run with the same options.
The figures behind each choice are in the README's "Inference speed" (`python bench/inference.py`).
This module loads no TensorFlow (setup.cfg's import-linter contracts), so a server needs only ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime

# Up to this many images a call, one thread per session: on 2 idle cores a second thread sped up batch 32 by
# 24 % and batch 256 by 30 %, batch 8 not at all, and batch 1 ran about 10 % slower with it.
SINGLE_THREAD_MAX_BATCH = 16


def onnx_session(onnx_path: Path, batch_hint: int = 1) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session for `onnx_path`, its options chosen for calls of about `batch_hint` images.

    Small batches (up to `SINGLE_THREAD_MAX_BATCH`) run on the calling thread alone
    (`intra_op_num_threads=1`): no thread pool to wake, lower p50 and p99. Larger batches get ONNX
    Runtime's own thread pool, one thread per physical core, spinning between the operators of a call.
    That pays only while the cores are free: under a process that keeps one of two cores busy, batch 256
    ran 2x faster on one thread, so pass `batch_hint=1` on a shared machine. Both keep ONNX Runtime's
    sequential execution and every graph optimization (`ORT_ENABLE_ALL`; its NCHWc layout doubled batch-256
    throughput over `ORT_ENABLE_EXTENDED`). Any batch size is accepted whatever the hint.

    Args:
        onnx_path: an exported `model.onnx`.
        batch_hint: the typical number of images a call will carry (1 for a request-at-a-time server).

    Returns:
        The session; `run(["probabilities"], {"pixels": float32 [batch, height, width, channels]})`.
    """
    options = onnxruntime.SessionOptions()
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1 if batch_hint <= SINGLE_THREAD_MAX_BATCH else 0  # 0: one per physical core
    return onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
