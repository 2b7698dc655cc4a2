"""The ASGI app: both protocols' routes, one log line per request, every refusal as `{"error": ...}` JSON, read
by the client even when it comes before the body."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from components.bucket_models import mirror_models
from components.errors import UserError
from pipeline.serving import tf_serving, v2
from pipeline.serving.batching import Batcher
from pipeline.serving.errors import RequestError
from pipeline.serving.limits import BUSY_PAUSE_SECONDS, Admission, RequestLimits
from pipeline.serving.models import ModelRepository
from pipeline.serving.shared import Serving, error_response

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("pipeline.serving.access")

# Seconds a refusal on a closing connection waits for the rest of the body, read and dropped (DrainBeforeClosing).
DRAIN_SECONDS = 10.0


@dataclass(frozen=True)
class ServeSettings:
    """How the server serves (the CLI's options, checked by `pipeline.serve`)."""

    saved_models_dir: Path  # <model>/<version>/ folders, TF Serving's layout
    backend: str = "onnx"  # onnx, litert, onnx-int8, litert-int8 (no TensorFlow) | savedmodel (components.model_files)
    # larger request bodies get 413; 4 MiB holds about 10,000 8x8 images as JSON numbers, 750 of 28x28.
    # Not more by default: a parsed JSON body takes ~30x its size in memory (4 MiB -> ~120 MiB)
    max_body_bytes: int = 4 * 1024 * 1024
    # more images in one request get 413, before any is decoded: it bounds one request's work and memory
    # (with max_images_in_flight, what the server holds); a client with more sends several requests
    max_batch_images: int = 1024
    # a request whose images do not fit beside those in flight (parsed, not yet answered) gets 503 with
    # Retry-After: 3 requests of 1024 images at once, or thousands of small ones. Counting images, not
    # requests, and keeping the last 256 for requests of 16 or fewer (limits.RESERVED_FRACTION), leaves
    # room for small requests however many large ones arrive
    max_images_in_flight: int = 4096
    # a body whose bytes (its Content-Length) do not fit beside the bodies being read and answered gets 503
    # with Retry-After: bodies hold at most 64 MiB however many clients connect; 15 bodies of 4 MiB, the
    # last 4 MiB kept for bodies of 256 KiB or less
    max_bytes_in_flight: int = 64 * 1024 * 1024
    # the pixels a request's encoded images ({"b64": ...}) may declare in all, read from their headers
    # before decoding (413 over it): one 4096x4096 photo, or 21,000 28x28 images; a few hundred tiny PNGs
    # declaring 4096x4096 each would otherwise cost seconds of decoding
    max_decoded_pixels: int = 4096 * 4096
    # a model call takes at most this many images; a larger request or batch is run in chunks of it, one after
    # another on its worker thread, so a call's activations stay bounded whatever clients send (same results)
    max_call_images: int = 256
    batch_window_ms: float = 0.0  # > 0: merge requests arriving within this many ms into one model call
    num_versions: int = 1  # newest versions of each model kept loaded; 0 = every version
    poll_seconds: float = 1.0  # how often saved_models/ is looked at for new and removed versions
    # a bucket's folder of model folders that saved_models_dir mirrors (components.bucket_models), brought up
    # to date before each look; None: saved_models_dir is the models' own folder
    models_url: str | None = None


def build_app(settings: ServeSettings, repository: ModelRepository | None = None) -> ASGIApp:
    """The server's ASGI app; it polls `settings.saved_models_dir` while it runs (ASGI lifespan).

    Args:
        settings: the server's options.
        repository: the models to serve; by default one over `settings.saved_models_dir`.
    """
    sync = functools.partial(mirror_models, settings.models_url, settings.num_versions) if settings.models_url \
        else None
    repository = repository or ModelRepository(settings.saved_models_dir, settings.backend, settings.num_versions,
                                               sync=sync)
    app = Starlette(
        routes=[*tf_serving.routes(), *v2.routes()],
        exception_handlers={RequestError: _request_error, UserError: _user_error, HTTPException: _http_error,
                            Exception: _internal_error},
        lifespan=_polling(repository, settings.poll_seconds),
        middleware=[Middleware(DrainBeforeClosing)],
    )
    app.state.serving = Serving(
        repository, Batcher(settings.batch_window_ms / 1000, settings.max_call_images), settings.max_body_bytes,
        settings.backend, RequestLimits(settings.max_batch_images, settings.max_decoded_pixels),
        images_in_flight=Admission(settings.max_images_in_flight, "images", "--max-images-in-flight"),
        bytes_in_flight=Admission(settings.max_bytes_in_flight, "body bytes", "--max-bytes-in-flight"))
    return AccessLog(app)


def _polling(repository: ModelRepository, interval_seconds: float):
    """A lifespan that polls the models folder on a thread of its own while the app runs."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = threading.Event()
        poller = threading.Thread(target=repository.poll, args=(stop, interval_seconds), name="model-poller",
                                  daemon=True)
        poller.start()
        yield
        stop.set()
        poller.join(timeout=10)

    return lifespan


async def _request_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestError)
    if error.retry_after_seconds is None:
        return error_response(error.status, str(error))
    await asyncio.sleep(BUSY_PAUSE_SECONDS)
    return error_response(error.status, str(error), {"Retry-After": str(error.retry_after_seconds)})


async def _user_error(request: Request, error: Exception) -> Response:
    return error_response(400, str(error))


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    if error.status_code == 404:
        return error_response(404, f"no such endpoint: {request.method} {request.url.path}; see "
                                   "/v1/models/<name> and /v2/models/<name>")
    return error_response(error.status_code, error.detail)


async def _internal_error(request: Request, error: Exception) -> Response:
    return error_response(500, f"internal error ({type(error).__name__}); the server log has the details")


class AccessLog:
    """ASGI middleware: one log line per request with its method, path, status and latency in ms.

    The path is logged as sent (percent-encoded), so a path cannot write a line of its own into the log.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            path = scope.get("raw_path") or scope["path"].encode()
            access_logger.info("%s %s %d %.1f ms", scope["method"], path.decode("ascii", "backslashreplace"),
                               status, (time.perf_counter() - started) * 1000)


class DrainBeforeClosing:
    """ASGI middleware: an error answer on a connection that closes after it (`Connection: close`, HTTP/1.0)
    is sent once the client has sent its whole body, which is read and dropped, for at most DRAIN_SECONDS.

    A refusal is often decided before the body is read (413 from its Content-Length, 503 while busy). On a
    kept-alive connection uvicorn reads and drops the rest after the answer; on one that closes it closes at
    once, and a socket closed with unread data answers the client with a reset, so a client still sending
    gets "connection reset" instead of its 413 or 503.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _closes_after_answer(scope):
            await self.app(scope, receive, send)
            return
        body_ended = False

        async def receive_noting_end() -> Message:
            nonlocal body_ended
            message = await receive()
            body_ended = message["type"] == "http.disconnect" or not message.get("more_body", False)
            return message

        async def send_after_draining(message: Message) -> None:
            # not after 408: a client that stopped sending is not waited for again
            if message["type"] == "http.response.start" and message["status"] >= 400 and message["status"] != 408 \
                    and not body_ended:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(_drain(receive_noting_end, lambda: body_ended), DRAIN_SECONDS)
            await send(message)

        await self.app(scope, receive_noting_end, send_after_draining)


async def _drain(receive: Receive, ended: Callable[[], bool]) -> None:
    """Read (and drop) the request's messages until `ended()`."""
    while not ended():
        await receive()


def _closes_after_answer(scope: Scope) -> bool:
    """Whether the connection closes after this request's answer (HTTP/1.0, or `Connection: close`)."""
    connection = b",".join(value for name, value in scope["headers"] if name == b"connection").lower()
    return b"close" in connection or (scope.get("http_version") == "1.0" and b"keep-alive" not in connection)
