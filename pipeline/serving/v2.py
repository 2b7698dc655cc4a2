"""The Open Inference Protocol (KServe v2) over HTTP, with Triton's binary tensor data extension.

    GET  /v2                                        server metadata
    GET  /v2/health/live, /v2/health/ready          200 once up / once the models found at start are loaded
    GET  /v2/models/<name>[/versions/<v>]           model metadata
    GET  /v2/models/<name>[/versions/<v>]/ready
    POST /v2/models/<name>[/versions/<v>]/infer     one input (FP32 or UINT8, [N, height, width, channels]),
                                                    one output, `probabilities` (FP32 [N, classes])

Binary tensor data is what Triton's own client (`tritonclient.http`) sends by default: the JSON, then
each input's raw little-endian bytes (header `Inference-Header-Content-Length` gives the JSON's length,
the input's `parameters.binary_data_size` its bytes), and it asks for outputs the same way
(`parameters.binary_data_output` on the request, or `binary_data` on an output), so both are supported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from components.loaded_model import InputSpec, LoadedModel
from pipeline.serving.errors import BadRequest
from pipeline.serving.limits import RequestBudget, RequestLimits
from pipeline.serving.shared import (
    admitted_body,
    admitted_probabilities,
    json_response,
    off_the_loop,
    parse_json_object,
    path_version,
    requested_model,
    serving,
)
from pipeline.serving.tensors import flat_tensor, tensor_from_bytes

DATATYPES = {"FP32": np.dtype(np.float32), "UINT8": np.dtype(np.uint8)}
HEADER_LENGTH = "Inference-Header-Content-Length"
# Triton's platform names; LiteRT has none there, so it gets one in Triton's runtime_format style
PLATFORMS = {"onnx": "onnxruntime_onnx", "onnx-int8": "onnxruntime_onnx", "savedmodel": "tensorflow_savedmodel",
             "litert": "litert_tflite", "litert-int8": "litert_tflite"}


@dataclass(frozen=True)
class InferRequest:
    """What an inference request asks for."""

    id: str | None  # echoed in the response
    pixels: np.ndarray  # [N, height, width, channels]
    binary_output: bool  # answer the output as raw bytes after the JSON


def routes() -> list[Route]:
    """The `/v2` routes."""
    return [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/{name}", model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}", model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
    ]


async def server_metadata(request: Request) -> Response:
    """The server's name, version and protocol extensions."""
    try:
        package_version = version("keras-pipeline")
    except PackageNotFoundError:
        package_version = "unknown"
    return json_response({"name": "keras-pipeline", "version": package_version,
                          "extensions": ["binary_tensor_data"]})


async def live(request: Request) -> Response:
    """200 while the server answers."""
    return json_response({"live": True})


async def ready(request: Request) -> Response:
    """200 once the models in the folder at start are loaded (or failed to), 503 before."""
    is_ready = serving(request).repository.ready.is_set()
    return json_response({"ready": is_ready}, 200 if is_ready else 503)


async def model_ready(request: Request) -> Response:
    """200 when the model (version) is served; 404 otherwise."""
    model = requested_model(request)
    return json_response({"name": model.name, "version": str(model.version), "ready": True})


async def model_metadata(request: Request) -> Response:
    """Name, versions, platform, and the input's and output's name, datatype and shape (-1: any batch)."""
    state = serving(request)
    served = state.repository.model(request.path_params["name"])
    number = path_version(request)
    model = served.version(number)
    versions = [number] if number is not None else sorted(served.versions)
    return json_response({
        "name": model.name, "versions": [str(each) for each in versions], "platform": PLATFORMS[state.backend],
        "inputs": [{"name": model.input.name, "datatype": "FP32", "shape": [-1, *model.input.shape]}],
        "outputs": [{"name": model.output_name, "datatype": "FP32", "shape": [-1, len(model.class_names)]}],
    })


async def infer(request: Request) -> Response:
    """Probabilities for the request's one input tensor, as JSON or binary tensor data."""
    model = requested_model(request)
    state = serving(request)
    async with admitted_body(request) as body:  # its bytes count as in flight until the answer is computed
        parsed = await off_the_loop(body, state.parse_slots, parse_infer_request,
                                    request.headers.get(HEADER_LENGTH), model, state.limits)
        probabilities = await admitted_probabilities(state, model, parsed.pixels)
    return infer_response(model, parsed, probabilities)


def parse_infer_request(body: bytes, header_length: str | None, model: LoadedModel,
                        limits: RequestLimits) -> InferRequest:
    """An inference request's id, input pixels and output format.

    Args:
        body: the JSON, then any binary tensor data.
        header_length: the `Inference-Header-Content-Length` header (the JSON's length), None without binary data.
        model: the model version asked for.
        limits: what one request may ask for.

    Raises:
        BadRequest: anything the protocol or this model does not allow.
        PayloadTooLarge: a shape of more images than `limits` allow.
    """
    json_part, binary = _split_body(body, header_length)
    request = parse_json_object(json_part, "the inference request")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest('"id" must be a string')
    pixels = _input_tensor(request.get("inputs"), binary, model.input, RequestBudget(limits))
    return InferRequest(request_id, pixels, _binary_output(request, model.output_name))


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON part of the body and the binary data after it."""
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise BadRequest(f"{HEADER_LENGTH} {header_length!r}: give the JSON's length in bytes, at most the body's "
                         f"{len(body)}")
    return body[:int(header_length)], body[int(header_length):]


def _input_tensor(inputs: Any, binary: bytes, spec: InputSpec, budget: RequestBudget) -> np.ndarray:
    """The one input tensor, from its JSON `data` (flat or nested) or from the binary data."""
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(f'"inputs" must be a list holding one tensor, {spec.name!r}')
    tensor, where = inputs[0], f"input {spec.name!r}"
    if tensor.get("name") != spec.name:
        raise BadRequest(f"input {tensor.get('name')!r}: this model has one input, {spec.name!r}")
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise BadRequest(f"{where}: datatype {datatype!r}; give {' or '.join(DATATYPES)}")
    shape, size = _shape(tensor.get("shape"), where), _binary_data_size(tensor, where)
    budget.count_images(shape[0] if shape else 1)
    if size is None:
        if binary:
            raise BadRequest("binary data follows the JSON, but the input has no parameters.binary_data_size")
        if "data" not in tensor:
            raise BadRequest(f'{where}: no "data" and no parameters.binary_data_size')
        return flat_tensor(tensor["data"], shape, DATATYPES[datatype], where)
    if "data" in tensor or size != len(binary):
        raise BadRequest(f'{where}: binary_data_size {size} with {len(binary)} bytes after the JSON'
                         + (' and "data" too' if "data" in tensor else ""))
    return tensor_from_bytes(binary, shape, DATATYPES[datatype], where)


def _shape(value: Any, where: str) -> list[int]:
    """A tensor's shape: a list of whole numbers >= 0."""
    if not isinstance(value, list) or not all(type(size) is int and size >= 0 for size in value):
        raise BadRequest(f'{where}: "shape" must be a list of whole numbers >= 0, e.g. [1, 8, 8, 1]')
    return value


def _binary_data_size(tensor: dict, where: str) -> int | None:
    """The input's `parameters.binary_data_size`, None when its data is in the JSON."""
    size = _parameters(tensor, where).get("binary_data_size")
    if size is not None and (type(size) is not int or size < 0):
        raise BadRequest(f"{where}: parameters.binary_data_size must be a whole number of bytes")
    return size


def _binary_output(request: dict, output_name: str) -> bool:
    """Whether the output goes back as binary data: per output, else the request's `binary_data_output`."""
    default = _flag(_parameters(request, "the request"), "binary_data_output", False)
    outputs = request.get("outputs") or []
    if not isinstance(outputs, list):
        raise BadRequest('"outputs" must be a list of {"name": ...}')
    binary = default
    for output in outputs:
        if not isinstance(output, dict) or output.get("name") != output_name:
            name = output.get("name") if isinstance(output, dict) else output
            raise BadRequest(f"output {name!r}: this model has one output, {output_name!r}")
        binary = _flag(_parameters(output, f"output {output_name!r}"), "binary_data", default)
    return binary


def _parameters(holder: dict, where: str) -> dict:
    parameters = holder.get("parameters", {})
    if not isinstance(parameters, dict):
        raise BadRequest(f'{where}: "parameters" must be an object')
    return parameters


def _flag(parameters: dict, key: str, default: bool) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"parameters.{key} must be true or false")
    return value


def infer_response(model: LoadedModel, request: InferRequest, probabilities: np.ndarray) -> Response:
    """The response: the output's data flat in the JSON, or its bytes after the JSON."""
    output: dict[str, Any] = {"name": model.output_name, "datatype": "FP32", "shape": list(probabilities.shape)}
    head = {"model_name": model.name, "model_version": str(model.version),
            **({"id": request.id} if request.id is not None else {}), "outputs": [output]}
    if not request.binary_output:
        output["data"] = probabilities.ravel().tolist()
        return json_response(head)
    raw = np.ascontiguousarray(probabilities, dtype="<f4").tobytes()
    output["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps(head, separators=(",", ":")).encode()
    return Response(header + raw, headers={HEADER_LENGTH: str(len(header))}, media_type="application/octet-stream")
