"""Writing TensorBoard event files with TensorBoard's own writer and protos, without TensorFlow.

The report stage writes the test results and the HParams record this way, so it needs no
TensorFlow; train writes its labelled images and per-epoch confusion matrices with it too, so one
writer owns its folder (TensorBoard polls only the newest event file of a folder for new data).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from components.plots import png_size


class EventLog:
    """One TensorBoard run folder's event file: scalars, PNG images and an HParams record."""

    def __init__(self, log_dir: Path):
        log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(log_dir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._add(step, summary_pb2.Summary.Value(tag=tag, simple_value=float(value)))

    def image(self, tag: str, png: bytes, step: int, description: str = "") -> None:
        """A PNG in the Images tab, in TensorBoard's current format (width, height, encoded image)."""
        width, height = png_size(png)
        shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=3)])
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape,
                                        string_val=[str(width).encode(), str(height).encode(), png])
        metadata = image_metadata.create_summary_metadata(display_name=tag, description=description)
        self._add(step, summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=metadata))

    def hparams(self, values: Mapping[str, Any], trial_id: str) -> None:
        """The run's settings for the HParams dashboard (its metrics are the scalars of its folders)."""
        summary = hparams_summary.hparams_pb({key: _hparam_value(value) for key, value in values.items()},
                                             trial_id=trial_id)
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=0, summary=summary))

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _add(self, step: int, value: summary_pb2.Summary.Value) -> None:
        event = event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=[value]))
        self._writer.add_event(event)


def _hparam_value(value: Any) -> bool | int | float | str:
    """HParams take booleans, numbers and strings; tuples are shown as text."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)
