"""TF Serving's REST API (`/v1/models/...`), answering as TF Serving does for the exported SavedModel.

    GET  /v1/models/<name>[/versions/<v>]             version status
    GET  /v1/models/<name>[/versions/<v>]/metadata    signature defs (serving_default float32, serving_uint8)
    POST /v1/models/<name>[/versions/<v>]:predict     {"instances": [...]} -> {"predictions": [...]}
                                                      {"inputs": ...}      -> {"outputs": [...]}

An image is raw pixels 0..255 nested as [height][width][channels], or an encoded PNG/JPEG as
`{"b64": "..."}` (TF Serving's convention for binary values), decoded and resized here.
"""

from __future__ import annotations

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
from pipeline.serving.tensors import b64_image, images_or_numbers, is_b64, numeric_array

# The SavedModel's signatures and their input's dtype (components/export.py writes both).
SIGNATURE_DTYPES = {"serving_default": "DT_FLOAT", "serving_uint8": "DT_UINT8"}


def routes() -> list[Route]:
    """The `/v1` routes."""
    return [
        Route("/v1/models/{name}", model_status, methods=["GET"]),
        Route("/v1/models/{name}/versions/{version}", model_status, methods=["GET"]),
        Route("/v1/models/{name}/metadata", model_metadata, methods=["GET"]),
        Route("/v1/models/{name}/versions/{version}/metadata", model_metadata, methods=["GET"]),
        Route("/v1/models/{name}:predict", predict, methods=["POST"]),
        Route("/v1/models/{name}/versions/{version}:predict", predict, methods=["POST"]),
    ]


async def model_status(request: Request) -> Response:
    """`{"model_version_status": [...]}`: the version asked for, or every served version, newest first."""
    served = serving(request).repository.model(request.path_params["name"])
    number = path_version(request)
    models = [served.version(number)] if number is not None else \
        [served.versions[version] for version in sorted(served.versions, reverse=True)]
    return json_response({"model_version_status": [
        {"version": str(model.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        for model in models]})


async def model_metadata(request: Request) -> Response:
    """The model spec and its signature defs, in TF Serving's GetModelMetadata JSON."""
    model = requested_model(request)
    return json_response({
        "model_spec": {"name": model.name, "signature_name": "", "version": str(model.version)},
        "metadata": {"signature_def": {"signature_def": signature_defs(model)}},
    })


def signature_defs(model: LoadedModel) -> dict[str, Any]:
    """Each serving signature's input and output: dtype and shape (-1: any batch size).

    The input's graph name follows TensorFlow's rule (`<signature>_<input>:0`); the output's depends on the
    order TensorFlow traced the signatures in, which only the SavedModel knows, so it is left out (as an
    empty proto3 field is).
    """
    num_classes = len(model.class_names)
    return {name: {
        "inputs": {model.input.name: _tensor_info(dtype, [-1, *model.input.shape], f"{name}_{model.input.name}:0")},
        "outputs": {model.output_name: _tensor_info("DT_FLOAT", [-1, num_classes])},
        "method_name": "tensorflow/serving/predict",
        "defaults": {},
    } for name, dtype in SIGNATURE_DTYPES.items()}


def _tensor_info(dtype: str, shape: list[int], tensor_name: str = "") -> dict[str, Any]:
    info = {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(size), "name": ""} for size in shape],
                                             "unknown_rank": False}}
    return {**info, "name": tensor_name} if tensor_name else info


async def predict(request: Request) -> Response:
    """Probabilities for the images of a row (`instances`) or columnar (`inputs`) request."""
    model = requested_model(request)
    state = serving(request)
    async with admitted_body(request) as body:  # its bytes count as in flight until the answer is computed
        pixels, rows = await off_the_loop(body, state.parse_slots, request_pixels, model.input, state.limits)
        probabilities = await admitted_probabilities(state, model, pixels)
    return json_response({"predictions" if rows else "outputs": probabilities.tolist()})


def request_pixels(body: bytes, spec: InputSpec, limits: RequestLimits) -> tuple[np.ndarray, bool]:
    """The pixels [N, height, width, channels] a predict request carries, and whether it is in row format.

    Raises:
        BadRequest: not a predict request, an unknown signature or input name, or values that are no images.
        PayloadTooLarge: more images, or encoded images declaring more pixels, than `limits` allow.
    """
    budget = RequestBudget(limits)
    request = parse_json_object(body)
    signature = request.get("signature_name") or "serving_default"
    if not isinstance(signature, str) or signature not in SIGNATURE_DTYPES:
        raise BadRequest(f"no signature {signature!r}; this model has {', '.join(SIGNATURE_DTYPES)}")
    if ("instances" in request) == ("inputs" in request):
        raise BadRequest('give either "instances" (row format: a list with one image per entry) or "inputs" '
                         "(columnar format), not both nor neither")
    if "instances" in request:
        return _rows(request["instances"], spec, budget), True
    inputs = request["inputs"]
    if isinstance(inputs, dict) and not is_b64(inputs):
        inputs = _named_input(inputs, spec, '"inputs"')
    return images_or_numbers(inputs, spec, '"inputs"', budget), False


def _rows(instances: Any, spec: InputSpec, budget: RequestBudget) -> np.ndarray:
    """Row format: one image per entry, as numbers, `{"b64": ...}` or `{"<input name>": either}`."""
    if not isinstance(instances, list) or not instances:
        raise BadRequest('"instances" must be a non-empty list with one image per entry')
    budget.count_images(len(instances))
    if not any(isinstance(instance, dict) for instance in instances):
        return numeric_array(instances, '"instances"')
    return np.stack([_instance(instance, spec, f'"instances"[{index}]', budget)
                     for index, instance in enumerate(instances)])


def _instance(instance: Any, spec: InputSpec, where: str, budget: RequestBudget) -> np.ndarray:
    """One image [height, width, channels] of the model's shape."""
    if isinstance(instance, dict) and not is_b64(instance):
        instance = _named_input(instance, spec, where)
    if is_b64(instance):
        return b64_image(instance, spec, where, budget)
    array = numeric_array(instance, where)
    if array.shape != spec.shape:
        raise BadRequest(f"{where}: an image of shape {list(array.shape)}; this model takes {list(spec.shape)} "
                         "(height, width, channels)")
    return array


def _named_input(value: dict, spec: InputSpec, where: str) -> Any:
    """The value of the model's one input in `{"<input name>": value}`."""
    if set(value) != {spec.name}:
        raise BadRequest(f"{where}: inputs named {sorted(value)}; this model has one input, {spec.name!r}")
    return value[spec.name]
