"""`python -m pipeline.serve` under abuse: each of its limits, met by a real client over a real socket.

One server for the module, with every limit small: 8 images per request and in flight, model calls of at
most 4 images, 4096 pixels to decode per request, bodies of 100 kB and 150 kB of them at once. Its batch
window is long (1 s), so a request of fewer than 4 images is held in flight until another joins its
batch: that is how a test keeps images in flight while it sends the next request. Each test fails if its
limit is taken out of the code (the report of issue 21 says how each was checked).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import http.client
import io
import json
import re
import socket
import struct
import subprocess
import sys
import time
import zlib
from typing import Iterator

import numpy as np
import pytest
import requests
from PIL import Image

from components.loaded_model import LoadedModel, load_exported
from pipeline.serving.app import ServeSettings
from pipeline.serving.batching import Batcher
from pipeline.serving.errors import ServiceUnavailable
from pipeline.serving.limits import BUSY_PAUSE_SECONDS, Admission
from tests.conftest import QUIET_ENV, REPO_DIR
from tests.test_serve import ATOL, INFER, PREDICT, Server, copy_saved_models, start_server

LIMITS = {"--max-body-bytes": 100_000, "--max-bytes-in-flight": 150_000, "--max-batch-images": 8,
          "--max-images-in-flight": 8, "--max-call-images": 4, "--max-decoded-pixels": 4096,
          "--batch-window-ms": 1000}


@pytest.fixture(scope="module")
def model(smoke_run) -> LoadedModel:
    return load_exported(smoke_run.workdir / "saved_models" / "digits")


@pytest.fixture(scope="module")
def server(smoke_run, tmp_path_factory) -> Iterator[Server]:
    """One ONNX server with every limit small, for the module."""
    args = [str(part) for option, value in LIMITS.items() for part in (option, value)]
    started = start_server(copy_saved_models(smoke_run, tmp_path_factory.mktemp("serve_limits")), *args)
    yield started
    started.stop()


def pixels(num_images: int, seed: int = 0) -> np.ndarray:
    """Random 8x8x1 uint8 images, the digits model's input."""
    return np.random.default_rng(seed).integers(0, 256, (num_images, 8, 8, 1), dtype=np.uint8)


def predict_body(images: np.ndarray, padding: int = 0) -> bytes:
    """TF Serving's row format for `images`, with `padding` spaces (JSON whitespace) to make a body longer."""
    return json.dumps({"instances": images.tolist()}).encode() + b" " * padding


def png(width: int, height: int) -> dict[str, str]:
    """`{"b64": ...}` of a gray PNG of `width` x `height` pixels."""
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, format="PNG")
    return {"b64": base64.b64encode(buffer.getvalue()).decode()}


def png_declaring(width: int, height: int) -> dict[str, str]:
    """`{"b64": ...}` of a 60-byte PNG whose header declares `width` x `height` pixels (its data is empty)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    data = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    return {"b64": base64.b64encode(data).decode()}


def refused(server: Server, path: str, body: bytes, status: int, *needles: str,
            headers: dict[str, str] | None = None) -> http.client.HTTPMessage:
    """Send `body`, check it is refused with `status` and one line of `{"error": ...}` naming `needles`;
    returns the response's headers."""
    connection = http.client.HTTPConnection(server.host_port, timeout=30)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == status, answer
    assert set(answer) == {"error"} and "\n" not in answer["error"], answer
    assert all(needle in answer["error"] for needle in needles), answer
    return response.headers


def test_more_images_than_max_batch_images_get_413_before_any_is_decoded(server, model):
    refused(server, PREDICT, predict_body(pixels(9)), 413, "9 images", "--max-batch-images")
    v2 = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [9, 8, 8, 1], "data": [0] * 9 * 64}]}
    refused(server, INFER, json.dumps(v2).encode(), 413, "9 images")
    head = json.dumps({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [9, 8, 8, 1],
                                   "parameters": {"binary_data_size": 9 * 64}}]}).encode()
    refused(server, INFER, head + bytes(9 * 64), 413, "9 images", "--max-batch-images",
            headers={"Inference-Header-Content-Length": str(len(head))})  # the binary tensor extension
    # not base64: decoding any of them would end in 400
    refused(server, PREDICT, json.dumps({"instances": [{"b64": "?"}] * 9}).encode(), 413, "--max-batch-images")
    answer = requests.post(f"{server.url}{PREDICT}", data=predict_body(pixels(8)), timeout=30)
    np.testing.assert_allclose(answer.json()["predictions"], model.probabilities(pixels(8)), atol=ATOL)


def test_images_that_do_not_fit_beside_those_in_flight_get_503_with_retry_after(server, model):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # 3 images (under a model call's 4) wait in their batch for the window's second: 3 of 8 in flight
        held = pool.submit(requests.post, f"{server.url}{PREDICT}", data=predict_body(pixels(3, 1)), timeout=30)
        time.sleep(0.3)
        started = time.monotonic()
        headers = refused(server, PREDICT, predict_body(pixels(6)), 503, "3 images in flight", "request's 6",
                          "--max-images-in-flight")
        assert headers["Retry-After"] == "1"
        assert time.monotonic() - started >= BUSY_PAUSE_SECONDS  # a lower bound set by a sleep, not a speed
        # counted in images, not requests: 5 more fit beside the 3, and are answered (as calls of 4 and 1)
        fits = requests.post(f"{server.url}{PREDICT}", data=predict_body(pixels(5)), timeout=30)
        np.testing.assert_allclose(fits.json()["predictions"], model.probabilities(pixels(5)), atol=ATOL)
        requests.post(f"{server.url}{PREDICT}", data=predict_body(pixels(1)), timeout=30)  # fills the held batch
        assert held.result().status_code == 200
    np.testing.assert_allclose(held.result().json()["predictions"], model.probabilities(pixels(3, 1)), atol=ATOL)


def test_a_body_that_does_not_fit_beside_those_being_received_gets_503_unread(server, model):
    with socket.create_connection(server.host_port.split(":")) as stalled:
        # 100,000 bytes announced and 10 sent: the server holds them in flight while it waits for the rest
        stalled.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        "Content-Length: 100000\r\n\r\n".encode() + b'{"instance')
        time.sleep(0.3)
        headers = refused(server, PREDICT, predict_body(pixels(8), padding=60_000), 503, "100000 body bytes",
                          "--max-bytes-in-flight")
        assert headers["Retry-After"] == "1"
        # under the cap, but into its last sixteenth (9,375 bytes), kept for smaller bodies
        assert 140_625 < 100_000 + len(predict_body(pixels(8), padding=43_000)) < 150_000
        refused(server, PREDICT, predict_body(pixels(8), padding=43_000), 503, "100000 body bytes")
        small = requests.post(f"{server.url}{PREDICT}", data=predict_body(pixels(8)), timeout=30)
        assert small.status_code == 200, small.text  # counted in bytes: a small body fits beside the large one
    deadline = time.monotonic() + 10  # the stalled client gone, its bytes are no longer in flight
    while (answer := requests.post(f"{server.url}{PREDICT}", data=predict_body(pixels(8), padding=60_000),
                                   timeout=30)).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert answer.status_code == 200, answer.text


def test_encoded_images_declaring_more_pixels_than_max_decoded_pixels_get_413(server, model):
    four = [png(32, 32)] * 4  # 4 x 1024 pixels: the limit exactly
    assert requests.post(f"{server.url}{PREDICT}", json={"instances": four}, timeout=30).status_code == 200
    refused(server, PREDICT, json.dumps({"instances": [*four[:3], png(33, 32)]}).encode(), 413,
            '"instances"[3]', "4128 pixels", "--max-decoded-pixels")
    refused(server, PREDICT, json.dumps({"instances": [png_declaring(4096, 4096)]}).encode(), 413,
            '"instances"[0]', "--max-decoded-pixels")


def test_the_header_check_reads_png_and_jpeg_only(server):
    gif = io.BytesIO()
    Image.new("L", (4, 4)).save(gif, format="GIF")  # Pillow reads GIFs, but the server must not
    body = json.dumps({"instances": [{"b64": base64.b64encode(gif.getvalue()).decode()}] * 4}).encode()
    refused(server, PREDICT, body, 400, '"instances"[0]', "not an image in PNG or JPEG format")


@pytest.mark.parametrize("close", [False, True], ids=["kept alive", "Connection: close"])
def test_a_refused_client_reads_its_answer_even_while_it_is_still_sending(server, close):
    """A body of 16 MB, far over --max-body-bytes and more than the sockets buffer: the server answers 413
    from the headers; the client sends it all, then reads the answer (not a reset connection)."""
    body = b" " * 16_000_000
    with socket.create_connection(server.host_port.split(":")) as client:
        client.settimeout(30)
        client.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\n{'Connection: close' if close else ''}\r\n\r\n".encode())
        client.sendall(body)
        answer = client.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]


def test_model_calls_take_at_most_max_call_images_and_answer_as_one_call(model):
    """In the server's Batcher, with batching off and on; the answers are those of one call of every image."""
    calls: list[int] = []

    class Recording:  # the model, noting each call's number of images
        input = model.input

        def probabilities(self, batch: np.ndarray) -> np.ndarray:
            calls.append(len(batch))
            return model.probabilities(batch)

    async def alone_then_batched(images: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        recording = Recording()
        alone = await Batcher(0, max_images=4).probabilities(recording, images)
        batcher = Batcher(window_seconds=0.05, max_images=4)  # 3 + 3 images: one batch of 6
        return alone, await asyncio.gather(*(batcher.probabilities(recording, part) for part in (images[:3],
                                                                                                 images[3:6])))

    images = pixels(10)
    alone, batched = asyncio.run(alone_then_batched(images))
    assert calls == [4, 4, 2, 4, 2]
    np.testing.assert_array_equal(alone, model.probabilities(images))
    np.testing.assert_array_equal(np.concatenate(batched), model.probabilities(images[:6]))


def test_every_limit_is_in_the_help_and_the_docs_with_its_default():
    result = subprocess.run([sys.executable, "-m", "pipeline.serve", "--help"], cwd=REPO_DIR, env=QUIET_ENV,
                            capture_output=True, text=True, timeout=60)
    options = " ".join(result.stdout.split("options:")[1].split())  # one line: help texts are wrapped
    docs = (REPO_DIR / "docs" / "using-the-model.md").read_text()
    for option in (option for option in LIMITS if option.startswith("--max-")):
        default = getattr(ServeSettings, option.removeprefix("--").replace("-", "_"))
        assert re.search(rf"{option} [A-Z_]+ (?:(?!--).)*\(default: {default}\)", options), (option, options)
        assert re.search(rf"^\| `{option}` \| [^|]+ \|", docs, re.MULTILINE), option  # a row of the docs' table


def test_cli_refuses_caps_that_a_request_allowed_alone_would_not_fit_under(tmp_path):
    (tmp_path / "saved_models").mkdir()
    result = subprocess.run([sys.executable, "-m", "pipeline.serve", "--workdir", str(tmp_path),
                             "--max-batch-images", "64", "--max-images-in-flight", "32"],
                            cwd=REPO_DIR, env=QUIET_ENV, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr.count("\n")) == (2, 1)
    assert result.stderr.startswith("error: --max-images-in-flight 32: give at least 68 (--max-batch-images 64 ")
    # 68 is the least that takes a request of 64: 67 keeps its last 4 for small requests, leaving 63
    assert [Admission(cap, "", "").room_for(64) >= 64 for cap in (67, 68)] == [False, True]


def test_at_the_defaults_large_requests_leave_the_reserve_to_small_ones():
    """Bodies just under --max-body-bytes fill 15/16 of --max-bytes-in-flight; a small one still gets in."""
    settings = ServeSettings(saved_models_dir=REPO_DIR)
    for capacity, largest, small in ((settings.max_bytes_in_flight, settings.max_body_bytes - 1, 300),
                                     (settings.max_images_in_flight, settings.max_batch_images // 4 - 1, 1)):
        admission = Admission(capacity, "", "")
        with contextlib.ExitStack() as held:
            while True:
                try:
                    held.enter_context(admission.admitted(largest))
                except ServiceUnavailable:
                    break
            assert admission.in_flight <= capacity - capacity // 16  # the reserve stays free ...
            with admission.admitted(small):  # ... for a small request (raises if refused)
                pass


@pytest.mark.parametrize("path, body", [(PREDICT, b'{"inputs": 5}'),
                                        (INFER, b'{"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [], '
                                                b'"data": [5]}]}')], ids=["v1", "v2"])
def test_a_single_number_for_pixels_is_one_clear_400(server, path, body):
    """Counted as one image, then refused by the model (not a 500 from taking its length)."""
    refused(server, path, body, 400, "pixels of shape []")
