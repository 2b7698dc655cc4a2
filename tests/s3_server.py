"""A real S3 API on 127.0.0.1 for the tests: `moto_server` in a subprocess.

Clients are pointed at it through the environment alone (`env`), as a user points the pipeline at MinIO
or another S3-compatible endpoint. It takes any key: with moto's authentication on (5.2.1), every listing
whose prefix holds a "/" is refused as a bad signature, so a server that checks keys (`locked=True`) is
started apart, for the tests of a refused key, and refuses every key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    """A running moto server: its endpoint, a working key, and (after `with_new_bucket`) a bucket."""

    endpoint: str
    key_id: str
    secret: str
    bucket: str = ""

    @property
    def env(self) -> dict[str, str]:
        """What a subprocess needs in its environment to use this server (the standard AWS variables)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    @property
    def url(self) -> str:
        """s3://BUCKET"""
        return f"s3://{self.bucket}"

    def client(self, secret: str | None = None):
        """A boto3 S3 client for this server (with another secret, to be refused)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=self.key_id,
                            aws_secret_access_key=secret or self.secret)

    def with_new_bucket(self, name: str) -> "S3Server":
        """This server with a new empty bucket named after `name` (lower case, 3-63 characters, unique)."""
        bucket = (re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:40] or "test") + f"-{time.time_ns() % 10**9}"
        self.client().create_bucket(Bucket=bucket)
        return dataclasses.replace(self, bucket=bucket)

    def put_tree(self, local_dir: Path, prefix: str) -> None:
        """Upload every file under `local_dir` to `s3://BUCKET/prefix/<relative path>`."""
        client = self.client()
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            client.upload_file(str(path), self.bucket, f"{prefix.strip('/')}/{path.relative_to(local_dir).as_posix()}")

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under `prefix`, sorted."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    @classmethod
    @contextmanager
    def started(cls, locked: bool = False) -> Iterator["S3Server"]:
        """Start moto's server on a free port (checking keys, and knowing none, when `locked`); stop it after."""
        port = _free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env={**os.environ, **({"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if locked else {})},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for(port, process)
            yield cls(f"http://127.0.0.1:{port}", "AKIATESTPIPELINE0001", "test-secret-of-the-pipeline")
        finally:
            process.terminate()
            process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(port: int, process: subprocess.Popen, timeout_seconds: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not listen on port {port} within {timeout_seconds} s")
