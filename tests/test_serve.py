"""`python -m pipeline.serve`, run as a real server process on 127.0.0.1 and called by real HTTP clients.

TF Serving's REST API through `requests` and `http.client`, the Open Inference Protocol through Triton's own
client (`tritonclient.http`), every answer checked against `load_exported(...).probabilities` on the same
pixels; inputs a public endpoint gets (each must get a 4xx JSON error and leave the server serving);
versions added and removed while it runs; dynamic batching; the SavedModel backend; concurrent clients on
kept-alive connections (how fast it answers them is bench/serve_load.py's to measure).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import gzip
import http.client
import io
import itertools
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from PIL import Image

from components.loaded_model import InputSpec, LoadedModel, decode_image, load_exported
from components.model_files import BACKENDS
from pipeline.serving.batching import Batcher
from pipeline.serving.errors import NotFound
from pipeline.serving.models import ModelRepository
from pipeline.serving.v2 import PLATFORMS
from tests.conftest import QUIET_ENV, REPO_DIR, read_split, run_python

MAX_BODY_BYTES = 1_000_000  # the module's server: small, so that a 413 costs little to provoke
ATOL = 1e-5


@dataclass
class Server:
    """A `python -m pipeline.serve` process and where it listens."""

    process: subprocess.Popen
    url: str
    log_path: Path

    @property
    def host_port(self) -> str:
        return self.url.removeprefix("http://")

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def start_server(workdir: Path, *args: str, timeout: float = 120) -> Server:
    """Start the server on a free port (`--port 0`, read from its log) and wait until /v2/health/ready is 200."""
    log_path = workdir / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "pipeline.serve", "--workdir", str(workdir), "--port", "0",
                                    *args], cwd=REPO_DIR, env=QUIET_ENV, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        if found := re.search(r"listening on (http://[\d.]+:\d+)", log_path.read_text()):
            server = Server(process, found.group(1), log_path)
            if _is_ready(server.url):
                return server
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"server not ready in {timeout} s:\n{log_path.read_text()}")


def _is_ready(url: str) -> bool:
    try:
        return requests.get(url + "/v2/health/ready", timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def copy_saved_models(smoke_run, workdir: Path) -> Path:
    """A workdir of our own holding a copy of the smoke run's saved_models/ (digits/1)."""
    shutil.copytree(smoke_run.workdir / "saved_models", workdir / "saved_models")
    return workdir


@pytest.fixture(scope="module")
def images(smoke_run) -> np.ndarray:
    """Six test images, uint8 [6, 8, 8, 1]."""
    return read_split(smoke_run.run_dir / "ingest", limit=6)[0]


@pytest.fixture(scope="module")
def model(smoke_run) -> LoadedModel:
    """The exported model as `components.loaded_model` runs it (ONNX Runtime): the reference for every answer."""
    return load_exported(smoke_run.workdir / "saved_models" / "digits")


@pytest.fixture(scope="module")
def server(smoke_run, tmp_path_factory) -> Iterator[Server]:
    """One ONNX server for the module's read-only tests."""
    started = start_server(copy_saved_models(smoke_run, tmp_path_factory.mktemp("serve")),
                           "--max-body-bytes", str(MAX_BODY_BYTES))
    yield started
    started.stop()


def png_b64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# TF Serving's REST API


def test_v1_status_and_metadata_are_tf_servings(server, model):
    status = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                        "status": {"error_code": "OK", "error_message": ""}}]}
    assert requests.get(f"{server.url}/v1/models/digits").json() == status
    assert requests.get(f"{server.url}/v1/models/digits/versions/1").json() == status

    metadata = requests.get(f"{server.url}/v1/models/digits/metadata").json()
    assert metadata["model_spec"] == {"name": "digits", "signature_name": "", "version": "1"}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {"serving_default", "serving_uint8"}
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["pixels"]["dtype"] == "DT_FLOAT"
    assert default["inputs"]["pixels"]["name"] == "serving_default_pixels:0"  # as saved_model_cli shows it
    assert signatures["serving_uint8"]["inputs"]["pixels"]["dtype"] == "DT_UINT8"
    assert [dim["size"] for dim in default["inputs"]["pixels"]["tensor_shape"]["dim"]] == ["-1", "8", "8", "1"]
    assert [dim["size"] for dim in default["outputs"]["probabilities"]["tensor_shape"]["dim"]] == ["-1", "10"]


def test_v1_predict_rows_columns_and_b64_equal_the_exported_model(server, model, images):
    expected = model.probabilities(images)
    predict = f"{server.url}/v1/models/digits:predict"

    rows = requests.post(predict, json={"instances": images.tolist()})
    assert rows.status_code == 200, rows.text
    np.testing.assert_allclose(rows.json()["predictions"], expected, atol=ATOL)

    columns = requests.post(f"{server.url}/v1/models/digits/versions/1:predict",
                            json={"signature_name": "serving_default", "inputs": {"pixels": images.tolist()}})
    np.testing.assert_allclose(columns.json()["outputs"], expected, atol=ATOL)

    encoded = requests.post(predict, json={"instances": [{"b64": png_b64(image)} for image in images]})
    assert encoded.status_code == 200, encoded.text
    np.testing.assert_allclose(encoded.json()["predictions"], expected, atol=ATOL)

    named = requests.post(predict, json={"instances": [{"pixels": {"b64": png_b64(images[0])}},
                                                       {"pixels": images[1].tolist()}]})
    np.testing.assert_allclose(named.json()["predictions"], expected[:2], atol=ATOL)


def test_v1_b64_images_of_another_size_are_resized_as_the_model_takes_them(server, model, images):
    big = np.asarray(Image.fromarray(images[0][..., 0]).resize((32, 32), Image.Resampling.NEAREST))[..., None]
    response = requests.post(f"{server.url}/v1/models/digits:predict", json={"instances": [{"b64": png_b64(big)}]})
    assert response.status_code == 200, response.text
    resized = decode_image(base64.b64decode(png_b64(big)), model.input)
    np.testing.assert_allclose(response.json()["predictions"], model.probabilities(resized[None]), atol=ATOL)


# The Open Inference Protocol, through Triton's own client


@pytest.mark.parametrize("binary_input", [True, False])
@pytest.mark.parametrize("binary_output", [True, False])
def test_tritonclient_infers_as_the_exported_model(server, model, images, binary_input, binary_output):
    client = triton.InferenceServerClient(server.host_port)
    pixels = images.astype(np.float32)
    tensor = triton.InferInput("pixels", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=binary_input)
    result = client.infer("digits", [tensor], outputs=[triton.InferRequestedOutput("probabilities",
                                                                                    binary_data=binary_output)])
    np.testing.assert_allclose(result.as_numpy("probabilities"), model.probabilities(images), atol=ATOL)
    [output] = result.get_response()["outputs"]
    assert result.get_response()["model_version"] == "1" and output["shape"] == [6, 10]
    assert (output.get("parameters") == {"binary_data_size": 6 * 10 * 4}) == binary_output
    assert ("data" in output) == (not binary_output)


def test_tritonclient_uint8_input_and_its_defaults(server, model, images):
    client = triton.InferenceServerClient(server.host_port)
    tensor = triton.InferInput("pixels", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)  # binary, and no outputs named: tritonclient asks for binary outputs
    result = client.infer("digits", [tensor], model_version="1", request_id="abc")
    assert result.get_response()["id"] == "abc"
    assert result.get_response()["outputs"][0]["parameters"] == {"binary_data_size": 6 * 10 * 4}
    np.testing.assert_allclose(result.as_numpy("probabilities"), model.probabilities(images), atol=ATOL)


def test_tritonclient_health_readiness_and_metadata(server):
    client = triton.InferenceServerClient(server.host_port)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    assert not client.is_model_ready("digits", "2") and not client.is_model_ready("mnist")
    assert client.get_model_metadata("digits") == {
        "name": "digits", "versions": ["1"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 8, 8, 1]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]}
    assert client.get_model_metadata("digits", "1")["versions"] == ["1"]
    with pytest.raises(triton.InferenceServerException, match="no model 'mnist'"):
        client.get_model_metadata("mnist")


def test_v2_json_data_nested_or_flat(server, model, images):
    expected = model.probabilities(images[:2])
    for data in (images[:2].tolist(), images[:2].ravel().tolist()):
        response = requests.post(f"{server.url}/v2/models/digits/infer", json={
            "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [2, 8, 8, 1], "data": data}]})
        assert response.status_code == 200, response.text
        output = response.json()["outputs"][0]
        assert (output["name"], output["datatype"], output["shape"]) == ("probabilities", "FP32", [2, 10])
        np.testing.assert_allclose(np.reshape(output["data"], (2, 10)), expected, atol=ATOL)


# What a public endpoint gets: each is refused with a 4xx JSON error, and the server goes on serving

PREDICT, INFER = "/v1/models/digits:predict", "/v2/models/digits/infer"


def _v2(data=None, **tensor) -> bytes:
    """A v2 inference request body whose one input has `tensor`'s fields over a valid default."""
    default = {"name": "pixels", "datatype": "FP32", "shape": [1, 8, 8, 1], "data": data or [0] * 64}
    return json.dumps({"inputs": [{**default, **tensor}]}).encode()


def _v2_binary(raw: bytes, declared_size: int, header_length: str | None = None) -> tuple[bytes, dict[str, str]]:
    """A v2 body carrying `raw` as the input's binary data, and its Inference-Header-Content-Length header."""
    head = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 8, 8, 1],
                                   "parameters": {"binary_data_size": declared_size}}]}).encode()
    return head + raw, {"Inference-Header-Content-Length": header_length or str(len(head))}


def _chunked(body: bytes, chunk_bytes: int = 65536) -> bytes:
    """`body` in HTTP/1.1 chunked transfer encoding (no Content-Length: only the bytes read tell the size)."""
    chunks = [body[start:start + chunk_bytes] for start in range(0, len(body), chunk_bytes)]
    return b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"


def _png_header(width: int, height: int) -> str:
    """A PNG that declares `width` x `height` pixels (its data is cut short)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk +
                            struct.pack(">I", zlib.crc32(chunk))).decode()


IMAGE = [[[0]] * 8] * 8  # one 8x8x1 image of zeros
BAD_REQUESTS = {  # name: (method, path, body, extra headers, expected status)
    "truncated JSON": ("POST", PREDICT, b'{"instances": [[[0], [0]', {}, 400),
    "empty body": ("POST", PREDICT, b"", {}, 400),
    "not UTF-8": ("POST", PREDICT, b"\xff\xfe\x00", {}, 400),
    "JSON array, not object": ("POST", PREDICT, b"[1, 2, 3]", {}, 400),
    "neither instances nor inputs": ("POST", PREDICT, b'{"signature_name": "serving_default"}', {}, 400),
    "both instances and inputs": ("POST", PREDICT, json.dumps({"instances": [IMAGE], "inputs": [IMAGE]}).encode(),
                                  {}, 400),
    "empty instances": ("POST", PREDICT, b'{"instances": []}', {}, 400),
    "NaN": ("POST", PREDICT, json.dumps({"instances": [[[[float("nan")]] * 8] * 8]}).encode(), {}, 400),
    "Infinity": ("POST", PREDICT, b'{"instances": [' + json.dumps(IMAGE).replace("0", "1e999", 1).encode() + b"]}",
                 {}, 400),
    "pixel over 255": ("POST", PREDICT, json.dumps({"instances": [[[[256]] * 8] * 8]}).encode(), {}, 400),
    "negative pixel": ("POST", PREDICT, json.dumps({"instances": [[[[-1]] * 8] * 8]}).encode(), {}, 400),
    "integer too large": ("POST", PREDICT, json.dumps({"instances": [[[[10 ** 40]] * 8] * 8]}).encode(), {}, 400),
    "wrong shape": ("POST", PREDICT, b'{"instances": [[1, 2, 3]]}', {}, 400),
    "wrong shape per instance": ("POST", PREDICT, json.dumps({"instances": [{"b64": png_b64(np.zeros((8, 8, 1),
                                 np.uint8))}, [[0]]]}).encode(), {}, 400),
    "ragged": ("POST", PREDICT, json.dumps({"instances": [IMAGE, IMAGE[:7]]}).encode(), {}, 400),
    "strings": ("POST", PREDICT, b'{"instances": ["one", "two"]}', {}, 400),
    "booleans": ("POST", PREDICT, json.dumps({"instances": [[[[True]] * 8] * 8]}).encode(), {}, 400),
    "nulls": ("POST", PREDICT, json.dumps({"instances": [[[[None]] * 8] * 8]}).encode(), {}, 400),
    "objects as pixels": ("POST", PREDICT, json.dumps({"instances": [[[{"x": 1}] * 8] * 8]}).encode(), {}, 400),
    "nested garbage, 100000 deep": ("POST", PREDICT, b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                    {}, 400),
    "nested arrays, 70 deep": ("POST", PREDICT, b'{"instances": ' + b"[" * 70 + b"0" + b"]" * 70 + b"}", {}, 400),
    "instances an object": ("POST", PREDICT, b'{"instances": {"a": {"b": {"c": []}}}}', {}, 400),
    "unknown input name": ("POST", PREDICT, json.dumps({"inputs": {"image": [IMAGE]}}).encode(), {}, 400),
    "unknown signature": ("POST", PREDICT, json.dumps({"signature_name": "classify", "instances": [IMAGE]}).encode(),
                          {}, 400),
    "signature not a string": ("POST", PREDICT, json.dumps({"signature_name": [1], "instances": [IMAGE]}).encode(),
                               {}, 400),
    "b64 not base64": ("POST", PREDICT, b'{"instances": [{"b64": "not base64!"}]}', {}, 400),
    "b64 not an image": ("POST", PREDICT, json.dumps({"instances": [{"b64": base64.b64encode(b"hello").decode()}]})
                         .encode(), {}, 400),
    "b64 with other keys": ("POST", PREDICT, b'{"instances": [{"b64": "", "x": 1}]}', {}, 400),
    "b64 PNG declaring 30000x30000 pixels": ("POST", PREDICT, json.dumps({"instances": [
        {"b64": _png_header(30000, 30000)}]}).encode(), {}, 400),
    "b64 PNG of 5000x5000 pixels (20 kB)": ("POST", PREDICT, json.dumps({"instances": [
        {"b64": png_b64(np.zeros((5000, 5000, 1), np.uint8))}]}).encode(), {}, 413),  # --max-decoded-pixels
    "body over the limit": ("POST", PREDICT, b'{"instances": [' + b"0," * MAX_BODY_BYTES + b"0]}", {}, 413),
    "chunked body over the limit": ("POST", PREDICT, _chunked(b'{"instances": [' + b"0," * MAX_BODY_BYTES + b"0]}"),
                                    {"Transfer-Encoding": "chunked"}, 413),
    "Content-Length of 1 TB": ("POST", PREDICT, b"{}", {"Content-Length": str(10 ** 12)}, 413),
    "gzip body (tritonclient's request_compression_algorithm)": ("POST", INFER, gzip.compress(_v2()),
                                                                 {"Content-Encoding": "gzip"}, 415),
    "unknown model": ("POST", "/v1/models/mnist:predict", json.dumps({"instances": [IMAGE]}).encode(), {}, 404),
    "unknown version": ("POST", "/v1/models/digits/versions/7:predict", json.dumps({"instances": [IMAGE]}).encode(),
                        {}, 404),
    "version not a number": ("GET", "/v1/models/digits/versions/latest", b"", {}, 404),
    "path with ..": ("GET", "/v1/models/../../../etc/passwd", b"", {}, 404),
    "path with %2e%2e": ("GET", "/v1/models/%2e%2e/%2e%2e/metadata", b"", {}, 404),
    "model name %2e%2e%2f": ("GET", "/v2/models/%2e%2e%2fsaved_models%2fdigits/ready", b"", {}, 404),
    "path with %00": ("GET", "/v1/models/digits%00", b"", {}, 404),
    "no such route": ("GET", "/", b"", {}, 404),
    "wrong method": ("DELETE", "/v2/models/digits/infer", b"", {}, 405),
    "v2 datatype BYTES": ("POST", INFER, _v2(datatype="BYTES"), {}, 400),
    "v2 datatype not a string": ("POST", INFER, _v2(datatype=["FP32"]), {}, 400),
    "v2 more values than the shape": ("POST", INFER, _v2(data=[0] * 65), {}, 400),
    "v2 shape of a billion images": ("POST", INFER, _v2(shape=[10 ** 9, 8, 8, 1]), {}, 413),  # --max-batch-images
    "v2 negative shape": ("POST", INFER, _v2(shape=[-1, 8, 8, 1]), {}, 400),
    "v2 shape of strings": ("POST", INFER, _v2(shape=["1", "8", "8", "1"]), {}, 400),
    "v2 wrong shape, right count": ("POST", INFER, _v2(shape=[1, 64]), {}, 400),
    "v2 UINT8 of 1.5": ("POST", INFER, _v2(datatype="UINT8", data=[1.5] * 64), {}, 400),
    "v2 UINT8 of 256": ("POST", INFER, _v2(datatype="UINT8", data=[256] * 64), {}, 400),
    "v2 NaN": ("POST", INFER, _v2(data=[float("nan")] * 64), {}, 400),
    "v2 data of strings": ("POST", INFER, _v2(data=["1"] * 64), {}, 400),
    "v2 unknown input": ("POST", INFER, _v2(name="image"), {}, 400),
    "v2 two inputs": ("POST", INFER, b'{"inputs": [{}, {}]}', {}, 400),
    "v2 unknown output": ("POST", INFER, json.dumps({**json.loads(_v2()), "outputs": [{"name": "logits"}]}).encode(),
                          {}, 400),
    "v2 binary_data not a bool": ("POST", INFER, json.dumps({**json.loads(_v2()), "outputs": [
        {"name": "probabilities", "parameters": {"binary_data": "yes"}}]}).encode(), {}, 400),
    "v2 id not a string": ("POST", INFER, json.dumps({**json.loads(_v2()), "id": {"a": 1}}).encode(), {}, 400),
    "v2 binary size over the body": ("POST", INFER, *_v2_binary(b"\0" * 10, 256), 400),
    "v2 binary bytes for another shape": ("POST", INFER, *_v2_binary(b"\0" * 255, 255), 400),
    "v2 binary and data both": ("POST", INFER, _v2(parameters={"binary_data_size": 256}) + b"\0" * 256,
                                {"Inference-Header-Content-Length":
                                 str(len(_v2(parameters={"binary_data_size": 256})))}, 400),
    "v2 binary without its size": ("POST", INFER, _v2() + b"\0" * 256, {"Inference-Header-Content-Length":
                                                                        str(len(_v2()))}, 400),
    "v2 binary NaN": ("POST", INFER, *_v2_binary(np.full(64, np.nan, "<f4").tobytes(), 256), 400),
    "v2 header length not a number": ("POST", INFER, *_v2_binary(b"\0" * 256, 256, "-5"), 400),
    "v2 header length over the body": ("POST", INFER, *_v2_binary(b"\0" * 256, 256, "99999"), 400),
}


def send(server: Server, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """One request through `http.client`, which sends the path exactly as given (no `..` resolved)."""
    connection = http.client.HTTPConnection(server.host_port, timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        length = {} if "Transfer-Encoding" in headers else {"Content-Length": str(len(body))}
        headers = {"Content-Type": "application/json", **length, **headers}
        for key, value in headers.items():
            connection.putheader(key, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_input_gets_a_4xx_json_error_and_the_server_goes_on(server, name):
    method, path, body, headers, status = BAD_REQUESTS[name]
    got, answer = send(server, method, path, body, headers)
    assert got == status, answer[:500]
    assert set(json.loads(answer)) == {"error"} and json.loads(answer)["error"]
    assert requests.post(f"{server.url}{PREDICT}", json={"instances": [IMAGE]}).status_code == 200
    assert "Traceback" not in server.log()


def test_a_body_cut_short_by_the_client_leaves_the_server_serving(server):
    with socket.create_connection(server.host_port.split(":")) as raw:
        raw.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    "Content-Length: 1000\r\n\r\n".encode() + b'{"instances": [[[0]')
        raw.shutdown(socket.SHUT_WR)
        raw.settimeout(10)
        answer = raw.recv(65536)  # the server closes, or answers with a 4xx: either way it does not hang
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer
    assert requests.post(f"{server.url}{PREDICT}", json={"instances": [IMAGE]}).status_code == 200
    assert server.process.poll() is None


def test_a_body_that_stalls_is_refused_with_408(monkeypatch):
    from starlette.requests import Request

    from pipeline.serving import shared
    from pipeline.serving.errors import RequestTimeout

    monkeypatch.setattr(shared, "BODY_TIMEOUT_SECONDS", 0.1)
    chunks = [{"type": "http.request", "body": b'{"inst', "more_body": True}]

    async def receive() -> dict:  # one chunk, then nothing more: a client that stopped sending
        if chunks:
            return chunks.pop()
        await asyncio.sleep(3600)

    request = Request({"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"100")]},
                      receive)
    with pytest.raises(RequestTimeout, match="did not arrive within 0.1 s"):
        asyncio.run(shared.read_body(request, 1000))


def test_a_body_is_read_no_further_than_its_content_length_which_admission_counted():
    """uvicorn's h11 parser (not httptools) passes on a chunked body sent beside `Content-Length: 10`: the
    server counted 10 bytes in flight, so it must not read 100 MB."""
    from starlette.requests import Request

    from pipeline.serving import shared
    from pipeline.serving.errors import BadRequest

    chunks = [{"type": "http.request", "body": b"0123456789" * 4, "more_body": True} for _ in range(1000)]
    sent = len(chunks)

    async def receive() -> dict:
        return chunks.pop()

    request = Request({"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"10")]},
                      receive)
    with pytest.raises(BadRequest, match=r"^the request body is longer than its Content-Length \(10 bytes\)$"):
        asyncio.run(shared.read_body(request, 4 * 1024 * 1024))
    assert sent - len(chunks) == 1  # stopped at the first chunk past 10 bytes


def test_a_compressed_body_is_refused_with_415_saying_to_send_it_uncompressed():
    from starlette.requests import Request

    from pipeline.serving import shared
    from pipeline.serving.errors import UnsupportedMediaType

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    def request(encoding: bytes) -> Request:
        return Request({"type": "http", "method": "POST", "path": "/", "headers": [(b"content-encoding", encoding)]},
                       receive)

    with pytest.raises(UnsupportedMediaType, match="^Content-Encoding gzip is not supported; send the body "
                                                   "uncompressed$"):
        asyncio.run(shared.read_body(request(b"gzip"), 1000))
    assert UnsupportedMediaType.status == 415
    assert asyncio.run(shared.read_body(request(b"identity"), 1000)) == b"{}"


def test_bodies_that_may_hold_images_are_parsed_off_the_loop_whatever_their_size():
    from pipeline.serving.shared import INLINE_PARSE_BYTES, parses_inline

    assert parses_inline(json.dumps({"instances": [IMAGE]}).encode())
    assert not parses_inline(json.dumps({"instances": [{"b64": png_b64(np.zeros((8, 8, 1), np.uint8))}]}).encode())
    assert not parses_inline(b'{"instances": [{"\\u0062\\u0036\\u0034": ""}]}')  # "b64", spelled as escapes
    assert not parses_inline(b"[" + b"0," * INLINE_PARSE_BYTES + b"0]")


def test_at_most_the_given_number_of_bodies_are_parsed_off_the_loop_at_once():
    from pipeline.serving.shared import INLINE_PARSE_BYTES, off_the_loop

    lock, running, most = threading.Lock(), [0], [0]
    # Each parse waits for a second one to be inside too (the barrier breaks, failing the test, if none
    # comes), then for the test to have looked at the slots while the first two held them.
    two_inside, first_two_inside, release = threading.Barrier(2, timeout=30), threading.Event(), threading.Event()

    def parse(body: bytes, tag: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        two_inside.wait()
        first_two_inside.set()
        assert release.wait(timeout=30)
        with lock:
            running[0] -= 1
        return tag

    async def parse_many() -> tuple[bool, list[int]]:
        slots, big = asyncio.Semaphore(2), b"0" * (INLINE_PARSE_BYTES + 1)
        parses = asyncio.gather(*(off_the_loop(big, slots, parse, tag) for tag in range(6)))
        assert await asyncio.to_thread(first_two_inside.wait, 30), "two parses never ran at once"
        held = slots.locked()  # the two parsing hold both slots: the other four wait on the loop
        release.set()
        return held, await parses

    assert asyncio.run(parse_many()) == (True, list(range(6)))
    assert most[0] == 2


def test_every_request_is_logged_with_method_path_status_and_latency(server):
    requests.get(f"{server.url}/v1/models/digits")
    requests.get(f"{server.url}/v1/models/nope%0aFAKE")
    log = wait_for_log(server, r"GET /v1/models/nope%0AFAKE 404 \d+\.\d ms$")  # as sent: no forged line
    assert re.search(r"pipeline\.serving\.access: GET /v1/models/digits 200 \d+\.\d ms$", log, re.M)
    assert not re.search(r"^FAKE", log, re.M)


def wait_for_log(server: Server, pattern: str, timeout: float = 10) -> str:
    """The server's log once a line matches `pattern` (a request is logged just after its answer is sent)."""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, log := server.log(), re.M):
        assert time.monotonic() < deadline, f"no line matching {pattern!r} in:\n{log}"
        time.sleep(0.05)
    return log


def test_concurrent_requests_each_get_their_own_answer(server, model, images):
    expected = model.probabilities(images)

    def call(index: int) -> list[float]:
        response = requests.post(f"{server.url}{PREDICT}", json={"instances": [images[index % 6].tolist()]})
        return response.json()["predictions"][0]

    results: dict[int, list[float]] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, call(i))) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, probabilities in results.items():
        np.testing.assert_allclose(probabilities, expected[index % 6], atol=ATOL)
    assert len(results) == 24


# Versions added and removed while the server runs


def test_versions_exported_and_removed_while_serving_are_followed(smoke_run, tmp_path, model, images):
    workdir = copy_saved_models(smoke_run, tmp_path)
    model_dir = workdir / "saved_models" / "digits"
    server = start_server(workdir, "--poll-seconds", "0.2")
    hammer = _Hammer(server, images[0], model.probabilities(images[:1]))
    hammer.start()
    try:
        hammer.wait_for_runs(["1"])
        shutil.copytree(model_dir / "1", model_dir / ".staging-2")  # as export publishes: staged, then renamed
        (model_dir / ".staging-2").rename(model_dir / "2")
        _wait_for_versions(server, ["2"])
        hammer.wait_for_runs(["1", "2"])  # the hammer called through the switch, and never went back
        assert requests.get(f"{server.url}/v1/models/digits/versions/1").status_code == 404  # newest only

        shutil.rmtree(model_dir / "2")
        _wait_for_versions(server, ["1"])
        hammer.wait_for_runs(["1", "2", "1"])
        answer = requests.post(f"{server.url}{PREDICT}", json={"instances": images.tolist()}).json()
        np.testing.assert_allclose(answer["predictions"], model.probabilities(images), atol=ATOL)
    finally:
        hammer.stop.set()
        hammer.join()
        server.stop()
    assert not hammer.failures, hammer.failures[:5]
    assert "serving digits versions [2] (was [1])" in server.log()
    assert "serving digits versions [1] (was [2])" in server.log()


class _Hammer(threading.Thread):
    """Infers one image, one request after another until `stop`, noting which version gave each right answer."""

    def __init__(self, server: Server, image: np.ndarray, expected: np.ndarray):
        super().__init__()
        self.url = f"{server.url}{INFER}"
        self.tensor = {"name": "pixels", "datatype": "UINT8", "shape": [1, *image.shape],
                       "data": image.ravel().tolist()}
        self.expected = expected
        self.versions: list[str] = []  # in the order answered
        self.failures: list[str] = []  # every answer that is not a 200 with the expected probabilities
        self.answered = threading.Condition()
        self.stop = threading.Event()

    def run(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                version, failure = self._infer(session)
                with self.answered:
                    if failure:
                        self.failures.append(failure)
                    else:
                        self.versions.append(version)
                    self.answered.notify_all()

    def _infer(self, session: requests.Session) -> tuple[str | None, str | None]:
        """The version that gave the expected answer, or what was wrong instead."""
        try:
            response = session.post(self.url, json={"inputs": [self.tensor]}, timeout=30)
        except requests.RequestException as error:
            return None, repr(error)
        answer = response.json() if response.status_code == 200 else {}
        if answer and np.allclose(answer["outputs"][0]["data"], self.expected.ravel(), atol=ATOL):
            return answer["model_version"], None
        return None, f"{response.status_code} {response.text}"

    def wait_for_runs(self, runs: list[str], timeout: float = 30) -> None:
        """Until the versions that answered, repeats left out, are `runs` so far (["1", "2"]: 1s, then 2s)."""
        def answered_runs() -> list[str]:
            return [version for version, _ in itertools.groupby(self.versions)]

        with self.answered:
            if not self.answered.wait_for(lambda: answered_runs() == runs, timeout):
                raise AssertionError(f"answered by versions {answered_runs()} in turn, not {runs}; failures: "
                                     f"{self.failures[:5]}")


def _wait_for_versions(server: Server, versions: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = requests.get(f"{server.url}/v1/models/digits").json()["model_version_status"]
        if [entry["version"] for entry in status] == versions:
            return
        time.sleep(0.1)
    raise AssertionError(f"versions {versions} not served within {timeout} s:\n{server.log()}")


class _FakeModel:
    """Stands in for a LoadedModel in the repository's and batcher's unit tests; counts its calls."""

    def __init__(self, version_dir: Path, backend: str = "onnx"):
        if (version_dir / "broken").exists():
            raise ValueError("broken export")
        self.name, self.version, self.version_dir = version_dir.parent.name, int(version_dir.name), version_dir
        self.input = InputSpec("pixels", 2, 2, 1)
        self.calls: list[int] = []

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        self.calls.append(len(pixels))
        return pixels.reshape(len(pixels), -1).astype(np.float32)


def _export(model_dir: Path, version: int, broken: bool = False) -> None:
    (model_dir / str(version)).mkdir(parents=True)
    (model_dir / str(version) / "metadata.json").write_text("{}")
    if broken:
        (model_dir / str(version) / "broken").write_text("")


def test_repository_keeps_the_newest_loadable_versions_and_retries_a_broken_one_when_it_changes(tmp_path):
    loads: list[Path] = []

    def load(version_dir: Path, backend: str) -> _FakeModel:
        loads.append(version_dir)
        return _FakeModel(version_dir)

    model_dir = tmp_path / "saved_models" / "digits"
    for version in (1, 2):
        _export(model_dir, version)
    _export(model_dir, 3, broken=True)
    (model_dir / "4").mkdir()  # no metadata.json: not an export
    (tmp_path / "saved_models" / ".staging").mkdir()
    repository = ModelRepository(tmp_path / "saved_models", "onnx", num_versions=1, load=load)
    repository.refresh()
    assert sorted(repository.models["digits"].versions) == [2]  # 3 failed: the next older one serves
    repository.refresh()
    assert [path.name for path in loads] == ["3", "2", ]  # nothing reloaded, the broken one not retried
    (model_dir / "3" / "broken").unlink()
    repository.refresh()
    assert sorted(repository.models["digits"].versions) == [3] and loads[-1].name == "3"

    every = ModelRepository(tmp_path / "saved_models", "onnx", num_versions=0, load=load)
    every.refresh()
    assert sorted(every.models["digits"].versions) == [1, 2, 3] and every.model("digits").newest.version == 3
    assert every.model("digits").version(None).version == 3 and every.model("digits").version(1).version == 1
    assert list(every.models) == ["digits"]

    shutil.rmtree(model_dir)  # a whole model removed
    every.refresh()
    assert every.models == {}
    with pytest.raises(NotFound, match="no model 'digits'"):
        every.model("digits")


def test_a_version_that_failed_is_retried_once_a_file_in_a_subfolder_changes(tmp_path):
    data_path = tmp_path / "digits" / "1" / "variables" / "variables.data-00000-of-00001"

    def load(version_dir: Path, backend: str) -> _FakeModel:
        if not data_path.read_bytes():
            raise ValueError("variables not written yet")
        return _FakeModel(version_dir)

    _export(tmp_path / "digits", 1)
    data_path.parent.mkdir()
    data_path.write_bytes(b"")  # a SavedModel whose variables are still being written
    repository = ModelRepository(tmp_path, "onnx", load=load)
    repository.refresh()
    assert repository.models == {}
    data_path.write_bytes(b"weights")  # only the nested file changes, not the version folder's own entries
    repository.refresh()
    assert sorted(repository.models["digits"].versions) == [1]


def test_an_odd_model_folder_does_not_stop_the_others_being_served(tmp_path, monkeypatch):
    from components.saved_models import version_dirs
    from pipeline.serving import models

    def odd_version_dirs(model_dir: Path) -> list[Path]:
        if model_dir.name == "odd" and (model_dir / "odd entry").exists():
            raise ValueError("invalid literal for int() with base 10: '²'")
        return version_dirs(model_dir)

    monkeypatch.setattr(models, "version_dirs", odd_version_dirs)
    for name in ("digits", "odd", "zeta"):
        _export(tmp_path / name, 1)
    repository = ModelRepository(tmp_path, "onnx", load=_FakeModel)
    repository.refresh()
    (tmp_path / "odd" / "odd entry").mkdir()
    _export(tmp_path / "digits", 2)
    repository.refresh()  # the others are followed; odd keeps what it served
    assert {name: sorted(model.versions) for name, model in repository.models.items()} == {
        "digits": [2], "odd": [1], "zeta": [1]}
    fresh = ModelRepository(tmp_path, "onnx", load=_FakeModel)
    fresh.refresh()
    assert sorted(fresh.models) == ["digits", "zeta"] and fresh.ready.is_set()


def test_ready_only_once_the_models_found_at_start_are_loaded(tmp_path):
    from starlette.requests import Request

    from pipeline.serving import v2
    from pipeline.serving.app import ServeSettings, build_app

    _export(tmp_path / "digits", 1)
    repository = ModelRepository(tmp_path, "onnx", load=_FakeModel)
    app = build_app(ServeSettings(tmp_path), repository).app  # the Starlette app inside the access log
    request = Request({"type": "http", "method": "GET", "path": "/v2/health/ready", "headers": [], "app": app})
    assert asyncio.run(v2.ready(request)).status_code == 503
    repository.refresh()
    assert asyncio.run(v2.ready(request)).status_code == 200


# Dynamic batching


def test_batcher_merges_requests_within_its_window_into_one_call(tmp_path):
    model = _FakeModel(tmp_path / "digits" / "1")
    batcher = Batcher(window_seconds=0.05)

    async def five_requests() -> list[np.ndarray]:
        pixels = [np.full((n, 2, 2, 1), n, np.float32) for n in (1, 2, 3, 1, 2)]
        return await asyncio.gather(*(batcher.probabilities(model, each) for each in pixels))

    results = asyncio.run(five_requests())
    assert model.calls == [9]  # one call for the nine images
    assert [result[:, 0].tolist() for result in results] == [[1], [2, 2], [3, 3, 3], [1], [2, 2]]

    unbatched = Batcher(window_seconds=0)
    asyncio.run(unbatched.probabilities(model, np.zeros((2, 2, 2, 1), np.float32)))
    assert model.calls == [9, 2]


def test_batching_server_answers_each_request_with_its_own_images(smoke_run, tmp_path, model, images):
    server = start_server(copy_saved_models(smoke_run, tmp_path), "--batch-window-ms", "20")
    try:
        test_concurrent_requests_each_get_their_own_answer(server, model, images)
        bad = requests.post(f"{server.url}{PREDICT}", json={"instances": [[[[300]] * 8] * 8]})
        assert bad.status_code == 400  # refused alone, before it could join a batch
    finally:
        server.stop()


# The command line, the backends


@pytest.mark.parametrize("args, message", [
    (["--workdir", "/nonexistent"], "no saved_models/ folder"),
    (["--batch-window-ms", "-1"], "--batch-window-ms -1"),
    (["--max-body-bytes", "10"], "--max-body-bytes 10"),
    (["--port", "70000"], "--port 70000"),
    (["--num-versions", "-1"], "--num-versions -1"),
])
def test_cli_refuses_bad_options_with_one_line(tmp_path, args, message):
    (tmp_path / "saved_models").mkdir()
    result = subprocess.run([sys.executable, "-m", "pipeline.serve", "--workdir", str(tmp_path), *args],
                            cwd=REPO_DIR, env=QUIET_ENV, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1


def test_cli_refuses_a_port_in_use(server):
    host, port = server.host_port.split(":")
    result = subprocess.run([sys.executable, "-m", "pipeline.serve", "--workdir", str(server.log_path.parent),
                             "--port", port], cwd=REPO_DIR, env=QUIET_ENV, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr.count("\n")) == (2, 1)
    assert result.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")


def test_onnx_and_litert_servers_load_no_tensorflow(smoke_run):
    result = run_python(
        "import sys; from pathlib import Path; import pipeline.serve\n"
        "from pipeline.serving.models import ModelRepository\n"
        "for backend in ('onnx', 'litert', 'onnx-int8', 'litert-int8'):\n"
        "    repository = ModelRepository(Path(sys.argv[1]), backend); repository.refresh()\n"
        "    assert list(repository.models) == ['digits'], (backend, repository.models)\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')))",
        str(smoke_run.workdir / "saved_models"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_backend_has_a_platform_name_for_the_v2_metadata():
    assert set(PLATFORMS) == set(BACKENDS)


@pytest.mark.parametrize("backend, platform", [
    pytest.param("savedmodel", "tensorflow_savedmodel", marks=pytest.mark.slow),  # 7 s: TensorFlow's start-up
    ("litert-int8", "litert_tflite")])
def test_another_backend_serves_both_protocols(smoke_run, tmp_path, images, backend, platform):
    server = start_server(copy_saved_models(smoke_run, tmp_path), "--backend", backend)
    try:
        # As the backend's own file answers in this process (export checked the SavedModel against Keras;
        # the int8 file answers otherwise)
        expected = load_exported(smoke_run.workdir / "saved_models" / "digits", backend).probabilities(images)
        rows = requests.post(f"{server.url}{PREDICT}", json={"instances": images.tolist()})
        np.testing.assert_allclose(rows.json()["predictions"], expected, atol=ATOL)
        client = triton.InferenceServerClient(server.host_port)
        assert client.get_model_metadata("digits")["platform"] == platform
        tensor = triton.InferInput("pixels", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)
        np.testing.assert_allclose(client.infer("digits", [tensor]).as_numpy("probabilities"), expected, atol=ATOL)
    finally:
        server.stop()


def test_clients_each_on_a_kept_alive_connection_get_every_answer_right(server, model, images):
    """What bench/serve_load.py loads the server with (its speed is measured there): 8 clients at once,
    each sending request after request on one connection."""
    expected = model.probabilities(images)
    all_connected = threading.Barrier(8, timeout=30)

    def client(index: int) -> list[list[list[float]]]:
        with requests.Session() as session:
            session.get(f"{server.url}/v2/health/ready", timeout=30)  # its connection, open before the others send
            all_connected.wait()
            return [session.post(f"{server.url}{PREDICT}", json={"instances": [images[(index + n) % 6].tolist()]},
                                 timeout=30).json()["predictions"] for n in range(5)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(client, range(8)))
    for index, predictions in enumerate(answers):
        np.testing.assert_allclose(np.concatenate(predictions), expected[[(index + n) % 6 for n in range(5)]],
                                   atol=ATOL)


def test_the_listening_socket_is_tcp_so_that_answers_are_not_held_back():
    from pipeline.serve import bind

    listener = bind("127.0.0.1", 0)  # proto 0 would leave asyncio's connections without TCP_NODELAY
    try:
        assert (listener.type, listener.proto) == (socket.SOCK_STREAM, socket.IPPROTO_TCP)
    finally:
        listener.close()
