"""Why a request was refused: each error carries its HTTP status; the app answers `{"error": message}`."""

from __future__ import annotations


class RequestError(Exception):
    """A request the server refuses (4xx), with a message that tells the client what to change."""

    status: int = 400


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
    """A request body over `--max-body-bytes`."""

    status = 413
