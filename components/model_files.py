"""The files of an exported version a consumer can load, one per backend, and what runs each.

`pipeline.predict --backend`, `pipeline.serve --backend` and `load_model(..., backend=)` take these names;
export writes the files and records what each scored (`metadata.json`'s `files`). It loads no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelFile:
    """One way to load an exported version."""

    backend: str  # the name consumers choose it by
    file_name: str  # in the version folder
    runtime: str  # what runs it
    int8: bool  # weights and activations quantized to 8-bit integers (written only with export.int8=true)

    def path(self, version_dir: Path) -> Path:
        return version_dir / self.file_name


MODEL_FILES = (
    ModelFile("onnx", "model.onnx", "ONNX Runtime", int8=False),
    ModelFile("savedmodel", "saved_model.pb", "TensorFlow", int8=False),
    ModelFile("litert", "model.tflite", "LiteRT", int8=False),
    ModelFile("onnx-int8", "model_int8.onnx", "ONNX Runtime", int8=True),
    ModelFile("litert-int8", "model_int8.tflite", "LiteRT", int8=True),
)
BACKENDS = tuple(each.backend for each in MODEL_FILES)
_BY_BACKEND = {each.backend: each for each in MODEL_FILES}
BACKEND_HELP = ("onnx: ONNX Runtime; litert: LiteRT (model.tflite, what phones run); onnx-int8, litert-int8: "
                "their int8 files, when exported with export.int8=true; savedmodel: TensorFlow, the only one "
                "that loads it")
FLOAT_TWIN = {"onnx-int8": "onnx", "litert-int8": "litert"}  # the float file an int8 file is gated against


def model_file(backend: str) -> ModelFile:
    """The file a backend loads; KeyError for a name not in `BACKENDS`."""
    return _BY_BACKEND[backend]
