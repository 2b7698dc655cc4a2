"""Load test: N concurrent HTTP clients for T seconds against a real `python -m pipeline.serve` on loopback.

    python bench/serve_load.py                            # smoke digits model; onnx and savedmodel; batching off
    python bench/serve_load.py --workdir DIR --clients 16 --seconds 20 --backends onnx --batch-window-ms 0 2 5
    python bench/serve_load.py --url http://127.0.0.1:8501 --seconds 2   # a server already running (tests)
    python bench/serve_load.py --compare-stacks           # a trivial endpoint on Starlette or FastAPI, h11+asyncio
                                                          # or httptools+uvloop: what the server was built on
    python bench/serve_load.py --abuse --clients 16 --seconds 10 --backends onnx   # the largest bodies it takes

Each client is an asyncio task with its own keep-alive connection (aiohttp), posting one image per request
(TF Serving's row format, or `--protocol v2` JSON) as soon as the previous answer came, for `--seconds`
after `--warmup` seconds that are not counted. A request counts as an error unless it gets a 200 with
one row of probabilities. Client and server share this machine's cores, so the figures are a floor for
the server alone. One server process per (backend, batch window), started with `--port 0` and stopped after.
`--compare-stacks` needs FastAPI, httptools and uvloop installed (the server itself needs none of them).

`--abuse`: `--clients` abusive clients each send, back to back and ignoring Retry-After, the costliest body the
server's default limits accept (the most images per request, PNGs declaring together the most pixels it
decodes, padded with spaces to the longest body), while one ordinary client sends one image per request.
Reported: the abusive answers by status, connections dropped (a client error instead of an answer), the
ordinary client's share of 200s and its p99, and the server's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import aiohttp
import numpy as np
from PIL import Image

REPO_DIR = Path(__file__).resolve().parents[1]
QUIET_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO_DIR)}
sys.path.insert(0, str(REPO_DIR))  # this checkout's pipeline (the server's default limits), not an installed one

from pipeline.serving.app import ServeSettings  # noqa: E402


@dataclass(frozen=True)
class Target:
    """What every client sends, and how an answer is judged."""

    method: str
    url: str
    body: bytes | None
    check: Callable[[bytes], bool]


@dataclass(frozen=True)
class Measurement:
    """One load run against one server configuration."""

    backend: str
    batch_window_ms: float
    protocol: str
    clients: int
    seconds: float
    requests: int
    errors: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="holds saved_models/ (default: a smoke run made first)")
    parser.add_argument("--url", help="load an already running server instead of starting one")
    parser.add_argument("--model", default="digits", help="the model to send images to")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients, one connection each")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per configuration")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    parser.add_argument("--backends", nargs="+", default=["onnx", "savedmodel"], choices=["onnx", "savedmodel"])
    parser.add_argument("--batch-window-ms", nargs="+", type=float, default=[0.0], help="one server per value")
    parser.add_argument("--protocol", choices=["v1", "v2"], default="v1", help="v1: TF Serving REST; v2: OIP JSON")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON instead of a table")
    parser.add_argument("--compare-stacks", action="store_true",
                        help="measure GET of a trivial endpoint on each ASGI stack instead")
    parser.add_argument("--abuse", action="store_true",
                        help="--clients clients send the largest bodies the server accepts, one more sends "
                             "one image per request: how the server holds (memory, drops, the ordinary share)")
    return parser.parse_args(argv)


@contextlib.contextmanager
def smoke_workdir() -> Iterator[Path]:
    """A temporary workdir holding the smoke preset's digits export (`python -m pipeline.run --preset smoke`)."""
    with tempfile.TemporaryDirectory(prefix="serve_load_") as workdir:
        subprocess.run([sys.executable, "-m", "pipeline.run", "--preset", "smoke", "--workdir", workdir],
                       cwd=REPO_DIR, env=QUIET_ENV, check=True, capture_output=True)
        yield Path(workdir)


@contextlib.contextmanager
def running_server(command: list[str], ready_path: str = "/v2/health/ready") -> Iterator[str]:
    """A server process (`command`) for the block's duration; yields its URL once `ready_path` answers 200."""
    with running_process(command, ready_path) as (url, _):
        yield url


@contextlib.contextmanager
def running_process(command: list[str], ready_path: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`running_server`, yielding the process too."""
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        process = subprocess.Popen(command, cwd=REPO_DIR, env=QUIET_ENV, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield wait_until_ready(process, Path(log.name), ready_path), process
        finally:
            process.terminate()
            process.wait(timeout=30)


def serve_command(workdir: Path, backend: str, batch_window_ms: float) -> list[str]:
    """`python -m pipeline.serve` on a free port with these options."""
    return [sys.executable, "-m", "pipeline.serve", "--workdir", str(workdir), "--port", "0", "--backend", backend,
            "--batch-window-ms", str(batch_window_ms)]


def wait_until_ready(process: subprocess.Popen, log_path: Path, ready_path: str, timeout: float = 120) -> str:
    """The server's URL (from its log line `listening on ...`) once it answers `ready_path` with 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log_path.read_text()}")
        if found := re.search(r"listening on (http://\S+:\d+)", log_path.read_text()):
            with contextlib.suppress(OSError), urllib.request.urlopen(found.group(1) + ready_path, timeout=5) as answer:
                if answer.status == 200:
                    return found.group(1)
        time.sleep(0.2)
    raise RuntimeError(f"the server was not ready within {timeout} s:\n{log_path.read_text()}")


def predict_target(url: str, model: str, protocol: str) -> Target:
    """One random image of the model's input shape per request, TF Serving's row format or v2 JSON."""
    with urllib.request.urlopen(f"{url}/v2/models/{model}", timeout=10) as answer:
        shape = json.load(answer)["inputs"][0]["shape"][1:]
    image = np.random.default_rng(0).integers(0, 256, (1, *shape))
    if protocol == "v1":
        return Target("POST", f"{url}/v1/models/{model}:predict", json.dumps({"instances": image.tolist()}).encode(),
                      _one_row)
    tensor = {"name": "pixels", "datatype": "FP32", "shape": list(image.shape), "data": image.ravel().tolist()}
    return Target("POST", f"{url}/v2/models/{model}/infer", json.dumps({"inputs": [tensor]}).encode(), _one_row)


def _one_row(answer: bytes) -> bool:
    """Whether a predict or infer answer holds one row of probabilities summing to 1."""
    try:
        parsed = json.loads(answer)
        row = parsed["predictions"][0] if "predictions" in parsed else parsed["outputs"][0]["data"]
        return abs(sum(row) - 1) < 1e-3
    except (ValueError, KeyError, IndexError, TypeError):
        return False


async def client(session: aiohttp.ClientSession, target: Target, measure_from: float, until: float,
                 latencies: list[float], errors: list[str]) -> None:
    """Send `target`'s request back to back until `until`; note latencies (ms) of those started after `measure_from`."""
    headers = {"Content-Type": "application/json"}
    while (started := time.perf_counter()) < until:
        try:
            async with session.request(target.method, target.url, data=target.body, headers=headers) as response:
                answer = await response.read()
                ok = response.status == 200 and target.check(answer)
        except aiohttp.ClientError as error:
            ok, answer = False, repr(error).encode()
        if started >= measure_from:
            latencies.append((time.perf_counter() - started) * 1000)
            if not ok:
                errors.append(answer[:200].decode(errors="replace"))


async def load(target: Target, args: argparse.Namespace) -> tuple[list[float], list[str]]:
    """Latencies (ms) and errors of `args.clients` clients over `args.seconds` after the warm-up."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.clients)) as session:
        measure_from = time.perf_counter() + args.warmup
        until = measure_from + args.seconds
        latencies: list[float] = []
        errors: list[str] = []
        await asyncio.gather(*(client(session, target, measure_from, until, latencies, errors)
                               for _ in range(args.clients)))
    return latencies, errors


def measure(target: Target, backend: str, batch_window_ms: float, args: argparse.Namespace) -> Measurement:
    """One load run against `target`."""
    latencies, errors = asyncio.run(load(target, args))
    if errors:
        print(f"{len(errors)} errors, the first: {errors[0]}", file=sys.stderr)
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return Measurement(backend, batch_window_ms, args.protocol, args.clients, args.seconds, len(latencies),
                       len(errors), round(len(latencies) / args.seconds, 1), round(quantiles[49], 2),
                       round(quantiles[98], 2))


# A trivial endpoint on one ASGI stack: argv = framework (starlette | fastapi), http (h11 | httptools), loop.
STACK_SERVER = """
import socket, sys, uvicorn
framework, http, loop = sys.argv[1:4]
if framework == "fastapi":
    from fastapi import FastAPI
    app = FastAPI()

    @app.get("/ping")
    async def ping():
        return {"ok": True}
else:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def ping(request):
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/ping", ping)])
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP: asyncio sets NODELAY
listener.bind(("127.0.0.1", 0))
listener.listen(2048)
print("listening on http://127.0.0.1:%d" % listener.getsockname()[1], flush=True)
config = uvicorn.Config(app, http=http, loop=loop, log_level="warning", access_log=False)
uvicorn.Server(config).run(sockets=[listener])
"""
STACKS = [("starlette", "h11", "asyncio"), ("starlette", "httptools", "uvloop"), ("fastapi", "h11", "asyncio"),
          ("fastapi", "httptools", "uvloop")]


def compare_stacks(args: argparse.Namespace) -> list[Measurement]:
    """GET of a trivial JSON endpoint on each stack; each row's `backend` names the stack."""
    measurements = []
    for framework, http, loop in STACKS:
        with running_server([sys.executable, "-c", STACK_SERVER, framework, http, loop], "/ping") as url:
            target = Target("GET", f"{url}/ping", None, lambda answer: answer == b'{"ok":true}')
            measurements.append(measure(target, f"{framework}/{http}/{loop}", 0.0, args))
    return measurements


def measure_server(workdir: Path, backend: str, batch_window_ms: float, args: argparse.Namespace) -> Measurement:
    """Start a server on `workdir`'s models with these options, load it, stop it."""
    with running_server(serve_command(workdir, backend, batch_window_ms)) as url:
        return measure(predict_target(url, args.model, args.protocol), backend, batch_window_ms, args)


@dataclass(frozen=True)
class AbuseMeasurement:
    """One abuse run: abusive clients sending the costliest accepted bodies beside one ordinary client."""

    backend: str
    abusive_clients: int
    abusive_body_bytes: int
    seconds: float
    abusive_answers: dict[str, int]  # HTTP status (or "dropped": a connection error) -> answers
    dropped_connections: int  # of every client, the ordinary one's included
    ordinary_requests: int
    ordinary_share_answered: float  # of the ordinary client's requests, the share answered 200
    ordinary_p99_ms: float
    server_peak_rss_mib: float


def abusive_body(url: str, model: str) -> bytes:
    """The costliest body the server's default limits accept: `max_batch_images` gray PNGs declaring together
    `max_decoded_pixels` (all decoded, then resized), padded with spaces to `max_body_bytes`."""
    side = int((ServeSettings.max_decoded_pixels / ServeSettings.max_batch_images) ** 0.5)
    buffer = io.BytesIO()
    Image.new("L", (side, side), 128).save(buffer, format="PNG")
    image = {"b64": base64.b64encode(buffer.getvalue()).decode()}
    body = json.dumps({"instances": [image] * ServeSettings.max_batch_images}).encode()
    return body + b" " * (ServeSettings.max_body_bytes - len(body))


async def abuser(session: aiohttp.ClientSession, url: str, body: bytes, until: float, answers: dict[str, int]) -> None:
    """Post `body` back to back until `until`, ignoring Retry-After; count the answers by status."""
    while time.perf_counter() < until:
        try:
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                await response.read()
                status = str(response.status)
        except aiohttp.ClientError:
            status = "dropped"
        answers[status] = answers.get(status, 0) + 1


def run_abusers(url: str, body: bytes, clients: int, seconds: float, answers: multiprocessing.Queue) -> None:
    """`clients` abusers for `seconds` (in a process of their own, so that their sending does not slow the
    ordinary client's event loop); their answers by status go to `answers`."""

    async def abuse() -> dict[str, int]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
            until, counts = time.perf_counter() + seconds, {}
            await asyncio.gather(*(abuser(session, url, body, until, counts) for _ in range(clients)))
        return counts

    answers.put(asyncio.run(abuse()))


async def ordinary(target: Target, seconds: float) -> tuple[list[float], list[str]]:
    """One ordinary client's latencies and errors over `seconds`."""
    async with aiohttp.ClientSession() as session:
        latencies: list[float] = []
        errors: list[str] = []
        await client(session, target, 0.0, time.perf_counter() + seconds, latencies, errors)
    return latencies, errors


def measure_abuse(workdir: Path, backend: str, args: argparse.Namespace) -> AbuseMeasurement:
    """Start a server with its default limits, abuse it for `args.seconds`, read its peak RSS, stop it."""
    with running_process(serve_command(workdir, backend, 0.0), "/v2/health/ready") as (url, process):
        target = predict_target(url, args.model, "v1")
        body = abusive_body(url, args.model)
        queue: multiprocessing.Queue = multiprocessing.Queue()
        abusers = multiprocessing.Process(target=run_abusers,
                                          args=(target.url, body, args.clients, args.seconds, queue))
        abusers.start()
        latencies, errors = asyncio.run(ordinary(target, args.seconds))
        answers = queue.get(timeout=60)
        abusers.join(timeout=30)
        peak_rss_kib = int(re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{process.pid}/status").read_text()).group(1))
    # the ordinary client's errors are answers ({"error": ...}) or, for a dropped connection, aiohttp's exception
    dropped = answers.get("dropped", 0) + sum(not error.startswith("{") for error in errors)
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else float("nan")
    return AbuseMeasurement(backend, args.clients, len(body), args.seconds, dict(sorted(answers.items())), dropped,
                            len(latencies), round(1 - len(errors) / max(1, len(latencies)), 3), round(p99, 2),
                            round(peak_rss_kib / 1024, 1))


def format_table(measurements: list[Measurement]) -> str:
    lines = [f"{'backend':<11}{'window ms':>10}{'proto':>6}{'clients':>8}{'seconds':>8}{'requests':>9}"
             f"{'errors':>7}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}"]
    lines += [f"{m.backend:<11}{m.batch_window_ms:>10g}{m.protocol:>6}{m.clients:>8}{m.seconds:>8g}{m.requests:>9}"
              f"{m.errors:>7}{m.requests_per_second:>9.1f}{m.p50_ms:>8.2f}{m.p99_ms:>8.2f}" for m in measurements]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.abuse:
        with contextlib.nullcontext(args.workdir) if args.workdir else smoke_workdir() as workdir:
            abused = [measure_abuse(workdir, backend, args) for backend in args.backends]
        print(json.dumps([asdict(m) for m in abused], indent=1))
        return 1 if any(m.dropped_connections for m in abused) else 0
    if args.compare_stacks:
        measurements = compare_stacks(args)
    elif args.url:
        measurements = [measure(predict_target(args.url.rstrip("/"), args.model, args.protocol), "(running)", 0.0,
                                args)]
    else:
        with contextlib.nullcontext(args.workdir) if args.workdir else smoke_workdir() as workdir:
            measurements = [measure_server(workdir, backend, window, args) for backend in args.backends
                            for window in args.batch_window_ms]
    print(json.dumps([asdict(m) for m in measurements], indent=1) if args.json else format_table(measurements))
    return 1 if any(m.errors for m in measurements) else 0


if __name__ == "__main__":
    sys.exit(main())
