"""The `tf.train.Example` of the split files, built and parsed with protobuf alone (no TensorFlow).

The messages are tensorflow/core/example/{example,feature}.proto's, with the same field numbers;
TensorBoard ships no example_pb2, and TensorFlow's would load TensorFlow. Only the kinds of feature
this format uses are declared (others parse as unknown fields). Ingest writes and the report reads
the records without TensorFlow through this module.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

_EXAMPLE_PROTO = """
name: "keras_pipeline/example.proto" package: "keras_pipeline" syntax: "proto3"
message_type { name: "BytesList" field { name: "value" number: 1 label: LABEL_REPEATED type: TYPE_BYTES } }
message_type { name: "Int64List" field { name: "value" number: 1 label: LABEL_REPEATED type: TYPE_INT64 } }
message_type {
  name: "Feature"
  field { name: "bytes_list" number: 1 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".keras_pipeline.BytesList" }
  field { name: "int64_list" number: 3 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".keras_pipeline.Int64List" }
}
message_type {
  name: "Features"
  field { name: "feature" number: 1 label: LABEL_REPEATED type: TYPE_MESSAGE
          type_name: ".keras_pipeline.Features.FeatureEntry" }
  nested_type {
    name: "FeatureEntry" options { map_entry: true }
    field { name: "key" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
    field { name: "value" number: 2 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".keras_pipeline.Feature" }
  }
}
message_type {
  name: "Example"
  field { name: "features" number: 1 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".keras_pipeline.Features" }
}
"""


def serialize_example(image: np.ndarray, label: int) -> bytes:
    """One serialized tf.train.Example of the format.

    Args:
        image: the pixels, already C-order and little-endian (their bytes are stored as they are).
        label: the class index.

    Returns:
        The record's bytes, as `tf.io.parse_example` reads them.
    """
    example = _example_class()()
    features = example.features.feature
    features["image"].bytes_list.value.append(image.tobytes())
    features["label"].int64_list.value.append(int(label))
    return example.SerializeToString()


def parse_image(record: bytes, image_shape: Sequence[int], dtype: str) -> np.ndarray:
    """The image of one serialized tf.train.Example of the format.

    Args:
        record: the record's bytes (a TFRecord frame's data).
        image_shape: (height, width, channels) of the image.
        dtype: the pixels' NumPy dtype name, e.g. "uint8".

    Returns:
        The image [H, W, C], a read-only view of the record's little-endian pixels.
    """
    example = _example_class()()
    example.ParseFromString(record)
    data = example.features.feature["image"].bytes_list.value[0]
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(image_shape)


@functools.cache
def _example_class() -> type:
    """The Example message class, in a pool of its own (TensorFlow's pool may hold its own Example)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

    pool = descriptor_pool.DescriptorPool()
    pool.Add(text_format.Parse(_EXAMPLE_PROTO, descriptor_pb2.FileDescriptorProto()))
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("keras_pipeline.Example"))
