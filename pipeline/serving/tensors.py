"""JSON values as pixel arrays: nested numbers or TF Serving's `{"b64": "<PNG or JPEG>"}`, checked before use.

Both protocols build a model's input here; the model's own check (`components.loaded_model.check_pixels`)
then refuses a wrong shape, NaN or values outside 0..255, so that check lives in one place.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import numpy as np

from components.images import BadImageError, read_header
from components.loaded_model import InputSpec, decode_image
from pipeline.serving.errors import BadRequest
from pipeline.serving.limits import RequestBudget


def numeric_array(value: Any, where: str) -> np.ndarray:
    """`value` (nested lists of numbers) as an array; ragged lists, strings, booleans and objects are refused.

    Args:
        value: a JSON value.
        where: what the value is in the request (e.g. `"instances"[3]`), for the error message.

    Raises:
        BadRequest: not a rectangular array of numbers.
    """
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError) as error:
        raise BadRequest(f"{where}: not a rectangular array of numbers ({error})") from None
    if array.dtype.kind not in "iuf":
        found = {"b": "booleans", "U": "strings", "O": "a mix of lists, objects, nulls or numbers too large"}
        raise BadRequest(f"{where}: {found.get(array.dtype.kind, array.dtype.name)} where numbers from 0 to 255 "
                         "are expected")
    return array


def is_b64(value: Any) -> bool:
    """Whether `value` is TF Serving's wrapper for binary data, `{"b64": "..."}`."""
    return isinstance(value, dict) and "b64" in value


def b64_image(value: dict, spec: InputSpec, where: str, budget: RequestBudget) -> np.ndarray:
    """Decode `{"b64": "<base64 PNG/JPEG>"}` into uint8 pixels [height, width, channels] of the model's shape.

    Args:
        value: the JSON value.
        spec: the model's input.
        where: what the value is in the request, for the error message.
        budget: the request's; the pixels the image's header declares are spent from it before decoding.

    Raises:
        BadRequest: other keys, not base64, not PNG or JPEG (from its header).
        PayloadTooLarge: the request's images declare more pixels than the server decodes for one request.
        UserError: not a readable image (from `decode_image`).
    """
    if set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise BadRequest(f'{where}: give an encoded image as {{"b64": "<base64 of a PNG or JPEG file>"}} alone')
    try:
        encoded = base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadRequest(f"{where}: b64 is not base64 ({error})") from None
    budget.spend_pixels(_declared_pixels(encoded, where), where)
    return decode_image(encoded, spec)


def _declared_pixels(encoded: bytes, where: str) -> int:
    """The pixels an image's header declares. Reads the header only, as PNG or JPEG (`read_header`, as ingest
    does): Pillow would otherwise decode (and allocate) a 20000x20000 PNG of a few hundred kilobytes first.

    Raises:
        BadRequest: what the decoder would refuse from the header alone (not PNG or JPEG, 16-bit).
    """
    try:
        header = read_header(encoded)
    except BadImageError as error:
        raise BadRequest(f"{where}: {error}") from None
    return header.width * header.height


def images_or_numbers(value: Any, spec: InputSpec, where: str, budget: RequestBudget) -> np.ndarray:
    """A batch [N, height, width, channels] from a list of `{"b64": ...}` images or from nested numbers.

    Raises:
        BadRequest: a mix of both, or values that are not numbers.
        PayloadTooLarge: more images, or more pixels to decode, than `budget` allows (before decoding).
    """
    budget.count_images(len(value) if isinstance(value, list) else 1)
    if isinstance(value, list) and value and all(is_b64(item) for item in value):
        return np.stack([b64_image(item, spec, f"{where}[{index}]", budget) for index, item in enumerate(value)])
    if is_b64(value):
        return b64_image(value, spec, where, budget)[np.newaxis]
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        raise BadRequest(f'{where}: a list mixing {{"b64": ...}} images with other values')
    return numeric_array(value, where)


def flat_tensor(data: Any, shape: list[int], dtype: np.dtype, where: str) -> np.ndarray:
    """A tensor of `shape` from its elements, flat or nested, as `dtype` (float32 or uint8).

    Raises:
        BadRequest: another number of elements than the shape holds, or values `dtype` cannot hold exactly.
    """
    array = numeric_array(data, where)
    if array.size != math.prod(shape):
        raise BadRequest(f"{where}: {array.size} values for shape {shape} ({math.prod(shape)} values)")
    if dtype == np.uint8 and array.dtype.kind == "f":
        raise BadRequest(f"{where}: UINT8 data must be whole numbers from 0 to 255; send FP32 for other values")
    if dtype == np.uint8 and array.size and (array.min() < 0 or array.max() > 255):
        raise BadRequest(f"{where}: UINT8 data must be whole numbers from 0 to 255")
    return array.reshape(shape).astype(dtype, copy=False)


def tensor_from_bytes(raw: bytes, shape: list[int], dtype: np.dtype, where: str) -> np.ndarray:
    """A tensor of `shape` from its little-endian bytes (Triton's binary tensor extension).

    Raises:
        BadRequest: another number of bytes than `shape` of `dtype` takes.
    """
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise BadRequest(f"{where}: {len(raw)} bytes of binary data for shape {shape} of {dtype.name} "
                         f"({expected} bytes)")
    return np.frombuffer(raw, dtype.newbyteorder("<")).reshape(shape)
