"""Why a request was refused: each error carries its HTTP status; the app answers `{"error": message}`."""

from __future__ import annotations


class RequestError(Exception):
    """A request the server refuses (4xx, or 503 while busy), with a message that tells the client what to do."""

    status: int = 400
    retry_after_seconds: int | None = None  # sent as Retry-After: the client may try again after this long


class BadRequest(RequestError):
    """Malformed JSON, a wrong shape, bad values, an unknown input or output name."""

    status = 400


class NotFound(RequestError):
    """No such model, version or route."""

    status = 404


class RequestTimeout(RequestError):
    """The request body did not arrive in time."""

    status = 408


class UnsupportedMediaType(RequestError):
    """A body sent compressed (Content-Encoding), which this server does not decode."""

    status = 415


class PayloadTooLarge(RequestError):
    """A request over one of its limits: its body's bytes, its images, the pixels its encoded images declare."""

    status = 413


class ServiceUnavailable(RequestError):
    """The server is busy: the request's work does not fit beside the work in flight; retry after a while."""

    status = 503

    def __init__(self, message: str, retry_after_seconds: int):
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds
