"""Command line: `python -m pipeline.serve [--workdir DIR | --models DIR_OR_URL] [--host 127.0.0.1] [--port 8501]
[--backend onnx]`.

Serves every model under `DIR/saved_models/` (or `--models`, a folder of model folders, in a bucket too:
`components.bucket_models` mirrors it into the cache) over HTTP with TF Serving's REST API (`/v1/...`) and the
Open Inference Protocol (`/v2/...`, which Triton's and KServe's clients speak), the newest version by
default, following new and removed versions without a restart. The app lives in `pipeline/serving/`.
Every request is held to limits (`--max-*`: its body, its images, the pixels it asks to decode, and the
work in flight at once), which `python -m pipeline.serve --help` lists with their defaults and
docs/using-the-model.md explains. Ctrl-C or SIGTERM stops it gracefully (requests in flight are answered
first); exit codes: 130 after Ctrl-C, 143 after SIGTERM (as pipeline.run), 2 a user's mistake (one line on
stderr), 1 anything else.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import socket
import sys
from pathlib import Path

import uvicorn

from components.bucket_models import mirror_models
from components.errors import UserError
from components.model_files import BACKEND_HELP, BACKENDS
from components.remote import is_url
from pipeline.serving.app import ServeSettings, build_app
from pipeline.serving.limits import RESERVED_FRACTION, Admission

logger = logging.getLogger("pipeline.serve")  # not __name__: that is __main__ under `python -m`


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.serve",
                                     description="Serve every model under WORKDIR/saved_models/ over HTTP "
                                                 "(TF Serving's REST API and the Open Inference Protocol).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("."), help="holds saved_models/")
    parser.add_argument("--models", metavar="DIR_OR_URL",
                        help="serve this folder of model folders instead of WORKDIR/saved_models/: a local folder, "
                             "or one in a bucket (s3://BUCKET/models, gs://...) whose newest --num-versions "
                             "complete versions of each model are fetched into the cache at start and at every poll")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface")
    parser.add_argument("--port", type=int, default=8501, help="port to listen on; 0 picks a free one (logged)")
    parser.add_argument("--backend", choices=BACKENDS, default=ServeSettings.backend,
                        help=BACKEND_HELP)
    parser.add_argument("--max-body-bytes", type=int, default=ServeSettings.max_body_bytes,
                        help="larger request bodies are refused with 413; each JSON byte takes ~30 bytes of "
                             "memory while parsed, so raise it with care")
    parser.add_argument("--max-batch-images", type=int, default=ServeSettings.max_batch_images,
                        help="requests of more images are refused with 413 before any is decoded: it bounds "
                             "one request's work; send more as several requests")
    parser.add_argument("--max-images-in-flight", type=int, default=ServeSettings.max_images_in_flight,
                        help="a request whose images do not fit beside those being answered gets 503 with "
                             "Retry-After; work is counted, not requests, so small requests get in while large "
                             "ones fill the server")
    parser.add_argument("--max-bytes-in-flight", type=int, default=ServeSettings.max_bytes_in_flight,
                        help="a body whose Content-Length does not fit beside the bodies being read and "
                             "answered gets 503 with Retry-After (unread): bounds the memory bodies take, "
                             "however many clients connect")
    parser.add_argument("--max-decoded-pixels", type=int, default=ServeSettings.max_decoded_pixels,
                        help="pixels a request's encoded images may declare in all (read from their "
                             "headers, before decoding; 413 over it): tiny PNGs declaring huge sizes cost "
                             "seconds to decode")
    parser.add_argument("--max-call-images", type=int, default=ServeSettings.max_call_images,
                        help="images per model call: larger requests and batches run in chunks of this many, "
                             "so a call's memory is bounded (the answers are the same)")
    parser.add_argument("--batch-window-ms", type=float, default=ServeSettings.batch_window_ms,
                        help="merge requests arriving within this many ms into one model call (0: off)")
    parser.add_argument("--num-versions", type=int, default=ServeSettings.num_versions,
                        help="newest versions of each model kept loaded (0: all); requests without a version "
                             "get the newest")
    parser.add_argument("--poll-seconds", type=float, default=ServeSettings.poll_seconds,
                        help="how often saved_models/ (or --models) is checked for new and removed versions")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("pipeline").setLevel(logging.INFO)
    logging.getLogger("components").setLevel(logging.INFO)
    try:
        settings = check_args(args)
        listener = bind(args.host, args.port)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        run(settings, listener)
    except KeyboardInterrupt:  # uvicorn stops gracefully on Ctrl-C, then raises it again
        return 130
    return 0


def check_args(args: argparse.Namespace) -> ServeSettings:
    """The server's settings from the command line.

    Raises:
        UserError: a value that cannot work, a workdir without `saved_models/`, or `--models` that holds no
            model (or a bucket that cannot be read).
    """
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: give a port from 1 to 65535, or 0 for any free port")
    if args.max_body_bytes < 1024:
        raise UserError(f"--max-body-bytes {args.max_body_bytes}: give at least 1024 bytes")
    _check_limits(args)
    if not 0 <= args.batch_window_ms <= 1000:
        raise UserError(f"--batch-window-ms {args.batch_window_ms:g}: give 0 (off) to 1000 ms")
    if args.num_versions < 0:
        raise UserError(f"--num-versions {args.num_versions}: give 0 (every version) or more")
    if not 0 < args.poll_seconds <= 3600:
        raise UserError(f"--poll-seconds {args.poll_seconds:g}: give more than 0 and at most 3600 seconds")
    saved_models_dir, models_url = _models_location(args)  # last: a bucket's models are fetched
    # every other field is set by the option of its name (--max-body-bytes sets max_body_bytes)
    return ServeSettings(saved_models_dir, models_url=models_url,
                         **{field.name: getattr(args, field.name) for field in dataclasses.fields(ServeSettings)
                            if field.name not in ("saved_models_dir", "models_url")})


def _models_location(args: argparse.Namespace) -> tuple[Path, str | None]:
    """The folder of model folders to serve, and the bucket's URL it mirrors (None for a local folder).

    A bucket's folder is mirrored here once, so that one unreachable, missing or refused is said at start.

    Raises:
        UserError: no such folder, no `saved_models/` in the workdir, or a bucket's folder that holds no
            complete version or cannot be read.
    """
    if args.models is None:
        if not (args.workdir / "saved_models").is_dir():
            raise UserError(f"--workdir {args.workdir}: no saved_models/ folder in it; give the workdir of "
                            "`python -m pipeline.run` (it exports there), or --models DIR_OR_URL")
        return args.workdir / "saved_models", None
    if is_url(args.models):
        return mirror_models(args.models, args.num_versions), args.models
    if not Path(args.models).is_dir():
        raise UserError(f"--models {args.models}: no such folder; give a folder of model folders "
                        "(saved_models/), or a bucket's URL")
    return Path(args.models), None


def _check_limits(args: argparse.Namespace) -> None:
    """Refuse limits below 1, and caps of work in flight that the largest request allowed would not fit under."""
    for name in ("max_batch_images", "max_images_in_flight", "max_bytes_in_flight", "max_decoded_pixels",
                 "max_call_images"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: give 1 or more")
    for cap, largest in (("max_images_in_flight", "max_batch_images"), ("max_bytes_in_flight", "max_body_bytes")):
        capacity, amount = getattr(args, cap), getattr(args, largest)
        if amount > Admission(capacity, "", "").room_for(amount):
            least = amount + amount // (RESERVED_FRACTION - 1)
            while Admission(least, "", "").room_for(amount) < amount:
                least += 1
            option, largest_option = f"--{cap.replace('_', '-')}", f"--{largest.replace('_', '-')}"
            raise UserError(f"{option} {capacity}: give at least {least} ({largest_option} {amount} and the last "
                            f"{RESERVED_FRACTION}th kept for small requests), or the largest request could never be "
                            "answered")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host`:`port`, bound here so that a taken port is a one-line error.

    Raises:
        UserError: the address cannot be bound (taken, not this machine's, not allowed).
    """
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # proto must say TCP: asyncio sets TCP_NODELAY only on such sockets' connections, and without it a
        # response written in two parts waits for the client's delayed ACK (40 ms a request).
        listener = socket.socket(family, kind, protocol)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except (OSError, UnicodeError) as error:
        raise UserError(f"cannot listen on {host}:{port} ({getattr(error, 'strerror', None) or error}); "
                        "pick another --port or --host") from None
    listener.listen(2048)
    return listener


def run(settings: ServeSettings, listener: socket.socket) -> None:
    """Serve until Ctrl-C or SIGTERM, logging where (uvicorn finishes the requests in flight first)."""
    host, port = listener.getsockname()[:2]
    served = f"{settings.models_url} (mirrored in {settings.saved_models_dir})" if settings.models_url else \
        settings.saved_models_dir
    logger.info("listening on http://%s:%d (%s backend), serving %s", host, port, settings.backend, served)
    config = uvicorn.Config(build_app(settings), log_config=None, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=10)
    uvicorn.Server(config).run(sockets=[listener])


if __name__ == "__main__":
    sys.exit(main())
