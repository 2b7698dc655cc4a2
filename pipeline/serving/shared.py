"""What the handlers of both protocols share: the app's state, reading a body within limits, JSON in and out."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, TypeVar

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from components.loaded_model import LoadedModel
from pipeline.serving.batching import Batcher
from pipeline.serving.errors import BadRequest, NotFound, PayloadTooLarge, RequestTimeout, UnsupportedMediaType
from pipeline.serving.limits import Admission, RequestLimits
from pipeline.serving.models import ModelRepository

# The whole body must arrive within this many seconds of the request's headers (a stalled client holds
# a connection and its memory otherwise; uvicorn's own timeouts cover only idle keep-alive connections).
BODY_TIMEOUT_SECONDS = 30.0
# Bodies up to this size are parsed on the event loop, unless they may hold images to decode; larger ones
# on a worker thread, so that parsing a big JSON array does not hold up the other requests.
INLINE_PARSE_BYTES = 64 * 1024
# At most this many bodies are parsed off the loop at once: a JSON body grows ~30x as Python objects
# (16 MiB of `[0],` is ~465 MiB), and anyio's 40 worker threads would otherwise parse 40 at a time.
MAX_CONCURRENT_PARSES = 2

T = TypeVar("T")


@dataclass(frozen=True)
class Serving:
    """What the request handlers share, kept on the app as `app.state.serving`."""

    repository: ModelRepository
    batcher: Batcher
    max_body_bytes: int
    backend: str
    limits: RequestLimits  # what one request may ask for
    images_in_flight: Admission  # images of the requests past their parse, until answered
    bytes_in_flight: Admission  # bytes of the bodies being read or held, until answered
    # Held while a body is parsed off the loop (MAX_CONCURRENT_PARSES); binds to the loop on first wait.
    parse_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_CONCURRENT_PARSES))


def serving(request: Request) -> Serving:
    """The app's shared state, for a handler."""
    return request.app.state.serving


def requested_model(request: Request) -> LoadedModel:
    """The version the path names (`.../<name>[/versions/<v>]...`): the newest when it names none.

    Raises:
        NotFound: no such model, or no such version being served.
    """
    return serving(request).repository.model(request.path_params["name"]).version(path_version(request))


@contextlib.asynccontextmanager
async def admitted_body(request: Request) -> AsyncIterator[bytes]:
    """The request's body (`read_body`), its bytes counted as in flight until the block ends.

    A body is counted from before it is read, by its Content-Length (the limit when it has none, as a
    chunked body), so bodies being received cannot hold more memory than the server admits.

    Raises:
        ServiceUnavailable: its bytes do not fit beside the bodies in flight (nothing of it is read).
        and what `read_body` raises.
    """
    state = serving(request)
    with state.bytes_in_flight.admitted(_bytes_to_hold(request, state.max_body_bytes)):
        yield await read_body(request, state.max_body_bytes)


def _bytes_to_hold(request: Request, max_bytes: int) -> int:
    """The bytes a body may take: its Content-Length, `max_bytes` when it has none; 0 when over `max_bytes`,
    as `read_body` then refuses it with 413 from its headers."""
    declared = request.headers.get("content-length", "")
    if not declared.isdigit():
        return max_bytes
    return int(declared) if int(declared) <= max_bytes else 0


async def admitted_probabilities(state: Serving, model: LoadedModel, pixels: np.ndarray) -> np.ndarray:
    """The model's probabilities for a request's pixels, its images counted as in flight meanwhile.

    Raises:
        ServiceUnavailable: its images do not fit beside those in flight.
        UserError: pixels the model refuses.
    """
    with state.images_in_flight.admitted(len(pixels) if pixels.ndim else 1):  # 0-d: refused by the model
        return await state.batcher.probabilities(model, pixels)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request's body, at most `max_bytes` long.

    Reading stops at the limit; uvicorn reads and drops the rest of a keep-alive request's body after
    the answer, so the client still reads its 413.

    Raises:
        PayloadTooLarge: a longer body (declared by Content-Length or sent).
        RequestTimeout: the body did not arrive within BODY_TIMEOUT_SECONDS.
        BadRequest: the client disconnected before sending the whole body.
        UnsupportedMediaType: a compressed body (any Content-Encoding but identity).
    """
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding} is not supported; send the body uncompressed")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    # No more than it declared, either: admission counted those bytes (h11, unlike httptools, lets a chunked
    # body run past a Content-Length sent beside it)
    limit = int(declared) if declared.isdigit() else max_bytes
    try:
        body = await asyncio.wait_for(_read_up_to(request, limit), BODY_TIMEOUT_SECONDS)
    except asyncio.TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {BODY_TIMEOUT_SECONDS:g} s") from None
    except ClientDisconnect:
        raise BadRequest("the request body ended before its Content-Length (client disconnected)") from None
    if body is None and limit < max_bytes:
        raise BadRequest(f"the request body is longer than its Content-Length ({limit} bytes)")
    if body is None:
        raise _too_large(max_bytes)
    return body


async def _read_up_to(request: Request, max_bytes: int) -> bytes | None:
    """The body, or None as soon as it is longer than `max_bytes`."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is over {max_bytes} bytes, this server's limit (--max-body-bytes); "
                           "send fewer images per request")


def parse_json_object(body: bytes, what: str = "the request body") -> dict[str, Any]:
    """`body` parsed as a JSON object.

    Raises:
        BadRequest: not UTF-8 JSON, nested too deeply, or not an object.
    """
    try:
        value = json.loads(body)
    except RecursionError:
        raise BadRequest(f"{what}: JSON nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise BadRequest(f"{what} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def parses_inline(body: bytes) -> bool:
    """Whether parsing `body` is cheap enough for the event loop: small, and no image to decode.

    Decided by the work, not only the size: a 44 kB body of two `{"b64": ...}` 4096x4096 PNGs takes ~100 ms
    to decode. A backslash may spell "b64" as JSON escapes, so such a body goes to a thread too.
    """
    return len(body) <= INLINE_PARSE_BYTES and b"b64" not in body and b"\\" not in body


async def off_the_loop(body: bytes, slots: asyncio.Semaphore, function: Callable[..., T], *args: Any) -> T:
    """`function(body, *args)`: on the event loop when `parses_inline(body)`, else on a worker thread.

    Args:
        body: the request body, the parse's first argument.
        slots: held while parsing on a thread, so that only a few large parses hold memory at once.
        function: the parse.
        args: its further arguments.
    """
    if parses_inline(body):
        return function(body, *args)
    async with slots:
        return await run_in_threadpool(function, body, *args)


def path_version(request: Request) -> int | None:
    """The version number in the path (`/versions/<v>`), None when the path names none.

    Raises:
        NotFound: a version that is not a number.
    """
    version = request.path_params.get("version")
    if version is None:
        return None
    if not version.isdigit() or not version.isascii():
        raise NotFound(f"version {version!r} is not a version number")
    return int(version)


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """`content` as a compact JSON response (a NaN raises: JSON cannot hold it, so it would be a bug here)."""
    body = json.dumps(content, separators=(",", ":"), allow_nan=False).encode()
    return Response(body, status, headers, media_type="application/json")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """`{"error": message}`, the error body of TF Serving and of the Open Inference Protocol."""
    return json_response({"error": message}, status, headers)

