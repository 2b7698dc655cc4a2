"""Command line: `python -m pipeline.serve [--workdir DIR] [--host 127.0.0.1] [--port 8501] [--backend onnx]`.

Serves every model under `DIR/saved_models/` over HTTP with TF Serving's REST API (`/v1/...`) and the
Open Inference Protocol (`/v2/...`, which Triton's and KServe's clients speak), the newest version by
default, following new and removed versions without a restart. The app lives in `pipeline/serving/`.
Ctrl-C or SIGTERM stops it gracefully (requests in flight are answered first); exit codes: 130 after Ctrl-C,
143 after SIGTERM (as pipeline.run), 2 a user's mistake (one line on stderr), 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

import uvicorn

from components.errors import UserError
from components.loaded_model import BACKENDS
from pipeline.serving.app import ServeSettings, build_app

logger = logging.getLogger("pipeline.serve")  # not __name__: that is __main__ under `python -m`


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.serve",
                                     description="Serve every model under WORKDIR/saved_models/ over HTTP "
                                                 "(TF Serving's REST API and the Open Inference Protocol).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("."), help="holds saved_models/")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface")
    parser.add_argument("--port", type=int, default=8501, help="port to listen on; 0 picks a free one (logged)")
    parser.add_argument("--backend", choices=BACKENDS, default=ServeSettings.backend,
                        help="onnx: ONNX Runtime, no TensorFlow loaded; savedmodel: TensorFlow")
    parser.add_argument("--max-body-bytes", type=int, default=ServeSettings.max_body_bytes,
                        help="larger request bodies are refused with 413; each JSON byte takes ~30 bytes of "
                             "memory while parsed, so raise it with care")
    parser.add_argument("--batch-window-ms", type=float, default=ServeSettings.batch_window_ms,
                        help="merge requests arriving within this many ms into one model call (0: off)")
    parser.add_argument("--num-versions", type=int, default=ServeSettings.num_versions,
                        help="newest versions of each model kept loaded (0: all); requests without a version "
                             "get the newest")
    parser.add_argument("--poll-seconds", type=float, default=ServeSettings.poll_seconds,
                        help="how often saved_models/ is checked for new and removed versions")
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
        UserError: a value that cannot work, or a workdir without `saved_models/`.
    """
    saved_models_dir = args.workdir / "saved_models"
    if not saved_models_dir.is_dir():
        raise UserError(f"--workdir {args.workdir}: no saved_models/ folder in it; give the workdir of "
                        "`python -m pipeline.run` (it exports there)")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: give a port from 1 to 65535, or 0 for any free port")
    if args.max_body_bytes < 1024:
        raise UserError(f"--max-body-bytes {args.max_body_bytes}: give at least 1024 bytes")
    if not 0 <= args.batch_window_ms <= 1000:
        raise UserError(f"--batch-window-ms {args.batch_window_ms:g}: give 0 (off) to 1000 ms")
    if args.num_versions < 0:
        raise UserError(f"--num-versions {args.num_versions}: give 0 (every version) or more")
    if not 0 < args.poll_seconds <= 3600:
        raise UserError(f"--poll-seconds {args.poll_seconds:g}: give more than 0 and at most 3600 seconds")
    return ServeSettings(saved_models_dir, args.backend, args.max_body_bytes, args.batch_window_ms,
                         args.num_versions, args.poll_seconds)


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
    logger.info("listening on http://%s:%d (%s backend), serving %s", host, port,
                                     settings.backend, settings.saved_models_dir)
    config = uvicorn.Config(build_app(settings), log_config=None, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=10)
    uvicorn.Server(config).run(sockets=[listener])


if __name__ == "__main__":
    sys.exit(main())
