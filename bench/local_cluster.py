"""Workers of a TensorFlow cluster on this machine (127.0.0.1), on ports held for them until they end.

A port found free (bound to port 0, then closed) can be taken by another process before a worker
binds it: another test's server, or any program's outgoing connection. The worker then stops with
"Could not start gRPC server". So the ports stay bound here, with SO_REUSEPORT, while the workers run:
a socket that is bound but not listening takes no connections, TensorFlow's gRPC server binds the same
port beside it when its environment has TF_GRPC_REUSE_PORT=1 (without it, TensorFlow refuses to share
a port), and no other process can bind the port or be given it for a connection meanwhile.

Used by bench/multi_worker.py and tests/test_multi_worker.py. Linux (SO_REUSEPORT).
"""

from __future__ import annotations

import contextlib
import json
import socket
from typing import Iterator


@contextlib.contextmanager
def local_cluster(num_workers: int) -> Iterator[list[dict[str, str]]]:
    """The environment variables of each of `num_workers` workers on 127.0.0.1, ports held until the block ends.

    Yields:
        For worker i: `TF_CONFIG` (the cluster, and task worker i) and `TF_GRPC_REUSE_PORT=1`.
    """
    with contextlib.ExitStack() as held:
        ports = [_hold_free_port(held) for _ in range(num_workers)]
        cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
        yield [{"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
                "TF_GRPC_REUSE_PORT": "1"} for index in range(num_workers)]


def _hold_free_port(held: contextlib.ExitStack) -> int:
    """A free port on 127.0.0.1, bound (not listening) by a socket that `held` closes."""
    sock = held.enter_context(socket.socket())
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]
