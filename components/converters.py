"""The files converted from the float exports: LiteRT (`model.tflite`) and the int8 ones.

- `model.tflite`: the SavedModel's `serving_default` converted by TensorFlow's LiteRT converter (Keras's
  own route to LiteRT: `model.export()`, then `tf.lite.TFLiteConverter.from_saved_model`, keras-team/keras#19108).
- `model_int8.tflite`: the same, full-integer: every weight and activation int8, calibrated on training
  images; float32 in and out, so it takes the same raw pixels and returns the same probabilities.
- `model_int8.onnx`: ONNX Runtime's static quantization of `model.onnx`, QDQ format, weights int8 per
  output channel, activations int8 (S8S8, ONNX Runtime's default), calibrated the same way. On this CPU
  (AVX-512 VNNI) S8S8 ran the Fashion model's batches of 256 1.4 to 2.0x faster than the float file, where
  uint8 activations (U8S8) ran them at 1.0 to 1.35x, at the same accuracy (docs/inference-speed.md).

Whether an int8 file is good enough to publish is decided by export (`export.int8_max_drop`), not here.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import tensorflow as tf
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

SIGNATURE = "serving_default"
CALIBRATION_BATCH = 32  # images per ONNX Runtime calibration call


def write_tflite(saved_model_dir: Path, path: Path) -> None:
    """`path`: the SavedModel's `serving_default` as a float32 LiteRT model (same input and output names)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[SIGNATURE])
    path.write_bytes(converter.convert())


def write_tflite_int8(saved_model_dir: Path, path: Path, calibration: np.ndarray, input_name: str) -> None:
    """`path`: a full-integer LiteRT model, its int8 ranges calibrated on `calibration` (raw pixels)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[SIGNATURE])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]  # fail rather than keep a float op

    def examples() -> Iterator[dict[str, np.ndarray]]:
        for index in range(len(calibration)):
            yield {input_name: calibration[index:index + 1].astype(np.float32)}

    converter.representative_dataset = examples
    with warnings.catch_warnings():  # the converter calibrates with tf.lite.Interpreter, which warns it is deprecated
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated", category=UserWarning)
        path.write_bytes(converter.convert())


def write_onnx_int8(onnx_path: Path, path: Path, calibration: np.ndarray, input_name: str) -> None:
    """`path`: `onnx_path` statically quantized (QDQ, per-channel int8 weights, int8 activations)."""
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared))  # folds and infers shapes, as ONNX Runtime advises
        quantize_static(str(prepared), str(path), _Calibration(calibration, input_name),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    quantized = onnx.load(str(path))
    shorten_names(quantized.graph)
    onnx.checker.check_model(quantized)
    onnx.save(quantized, str(path))


def shorten_names(graph: onnx.GraphProto) -> None:
    """Rename every tensor but the graph's inputs and outputs to `t0`, `t1`, ..., and drop node names.

    The QDQ graph repeats each long Keras name (`classifier_1/cnn_1/dense_2_1/Cast/ReadVariableOp:0_quantized`)
    in several tensors and nodes: the names made the int8 file of a small network larger than its float twin
    (27.8 KiB against 19.5 KiB for the smoke model; 9.7 KiB once shortened).
    """
    kept = {value.name for value in (*graph.input, *graph.output)} | {""}  # "": an omitted optional input
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        return name if name in kept else short.setdefault(name, f"t{len(short)}")

    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for value in graph.value_info:
        value.name = rename(value.name)
    for node in graph.node:
        node.input[:] = [rename(name) for name in node.input]
        node.output[:] = [rename(name) for name in node.output]
        node.name = ""


class _Calibration(CalibrationDataReader):
    """The calibration images in batches, as ONNX Runtime's calibrator reads them."""

    def __init__(self, images: np.ndarray, input_name: str):
        pixels = images.astype(np.float32)
        self._batches = iter([{input_name: pixels[start:start + CALIBRATION_BATCH]}
                              for start in range(0, len(pixels), CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)
