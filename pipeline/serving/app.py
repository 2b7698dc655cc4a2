"""The ASGI app: both protocols' routes, one log line per request, every refusal as `{"error": ...}` JSON."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from components.errors import UserError
from pipeline.serving import tf_serving, v2
from pipeline.serving.batching import Batcher
from pipeline.serving.errors import RequestError
from pipeline.serving.models import ModelRepository
from pipeline.serving.shared import Serving, error_response

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("pipeline.serving.access")


@dataclass(frozen=True)
class ServeSettings:
    """How the server serves (the CLI's options, checked by `pipeline.serve`)."""

    saved_models_dir: Path  # <model>/<version>/ folders, TF Serving's layout
    backend: str = "onnx"  # onnx (ONNX Runtime, no TensorFlow) | savedmodel (TensorFlow)
    # larger request bodies get 413; 4 MiB holds about 10,000 8x8 images as JSON numbers, 750 of 28x28.
    # Not more by default: a parsed JSON body takes ~30x its size in memory (4 MiB -> ~120 MiB)
    max_body_bytes: int = 4 * 1024 * 1024
    batch_window_ms: float = 0.0  # > 0: merge requests arriving within this many ms into one model call
    num_versions: int = 1  # newest versions of each model kept loaded; 0 = every version
    poll_seconds: float = 1.0  # how often saved_models/ is looked at for new and removed versions


def build_app(settings: ServeSettings, repository: ModelRepository | None = None) -> ASGIApp:
    """The server's ASGI app; it polls `settings.saved_models_dir` while it runs (ASGI lifespan).

    Args:
        settings: the server's options.
        repository: the models to serve; by default one over `settings.saved_models_dir`.
    """
    repository = repository or ModelRepository(settings.saved_models_dir, settings.backend, settings.num_versions)
    app = Starlette(
        routes=[*tf_serving.routes(), *v2.routes()],
        exception_handlers={RequestError: _request_error, UserError: _user_error, HTTPException: _http_error,
                            Exception: _internal_error},
        lifespan=_polling(repository, settings.poll_seconds),
    )
    app.state.serving = Serving(repository, Batcher(settings.batch_window_ms / 1000), settings.max_body_bytes,
                                settings.backend)
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
    return error_response(error.status, str(error))


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
