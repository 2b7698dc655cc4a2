"""Models in a bucket (components/bucket_models.py): predict, `load_model` and the server reading the smoke run's
export from a real S3 endpoint (moto's server, tests/s3_server.py) and from fsspec's memory store.

Versions are uploaded as the pusher uploads them: every file, then `metadata.json` last.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import fsspec
import numpy as np
import pytest
import requests
from PIL import Image

from components.errors import UserError
from components.loaded_model import load_exported
from components.saved_models import METADATA_FILE
from pipeline import predict, serve
from pipeline.api import load_model
from pipeline.serving.models import ModelRepository
from tests.conftest import QUIET_ENV, REPO_DIR

CHANGED_FILE = "model_card.md"  # a file of the version that the answers do not depend on


@pytest.fixture(scope="module")
def version_dir(smoke_run) -> Path:
    """The smoke run's export, digits/1 (read only)."""
    return smoke_run.workdir / "saved_models" / "digits" / "1"


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """Five 8x8 grayscale PNGs of noise: the answers compared are the model's, whatever the images show."""
    folder = tmp_path_factory.mktemp("images")
    pixels = np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    for index, image in enumerate(pixels):
        Image.fromarray(image, "L").save(folder / f"image_{index}.png")
    return folder



def upload_version(s3, version_dir: Path, prefix: str, complete: bool = True) -> None:
    """Upload a version folder as the pusher does: every file, then `metadata.json` (left out if not `complete`)."""
    client = s3.client()
    files = sorted(path for path in version_dir.rglob("*") if path.is_file() and path.name != METADATA_FILE)
    for path in files:
        client.upload_file(str(path), s3.bucket, f"{prefix}/{path.relative_to(version_dir).as_posix()}")
    if complete:
        client.upload_file(str(version_dir / METADATA_FILE), s3.bucket, f"{prefix}/{METADATA_FILE}")


def cached_files(cache_dir: Path) -> set[tuple[str, int, int]]:
    """Every file fetched into the cache, with its inode and modification time: a new download changes them."""
    objects_dir = cache_dir / "objects"
    return {(path.relative_to(objects_dir).as_posix(), (stat := path.stat()).st_ino, stat.st_mtime_ns)
            for path in objects_dir.rglob("*") if path.is_file()}


# predict


def run_predict(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.predict", *args, "--format", "json", "--top-k", "3"],
                          cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # three runs of the predict CLI
def test_predict_from_a_bucket_answers_as_locally_and_fetches_a_version_once(s3, version_dir, image_dir, tmp_path):
    upload_version(s3, version_dir, "models/digits/1")
    cache_dir = tmp_path / "cache"
    env = {**QUIET_ENV, **s3.env, "KERAS_PIPELINE_CACHE": str(cache_dir)}
    local = run_predict(env, str(version_dir.parent), str(image_dir))
    assert local.returncode == 0, local.stderr

    first = run_predict(env, f"{s3.url}/models/digits", str(image_dir))
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == json.loads(local.stdout)
    fetched = cached_files(cache_dir)
    assert {name.split("/", 1)[1] for name, _, _ in fetched} == \
        {path.relative_to(version_dir).as_posix() for path in version_dir.rglob("*") if path.is_file()}

    again = run_predict(env, f"{s3.url}/models/digits", str(image_dir))
    assert (again.returncode, again.stdout) == (0, first.stdout)
    assert cached_files(cache_dir) == fetched  # nothing downloaded again

    assert (version_dir / CHANGED_FILE).is_file()
    s3.client().put_object(Bucket=s3.bucket, Key=f"models/digits/1/{CHANGED_FILE}", Body=b"changed in the bucket")
    changed = run_predict(env, f"{s3.url}/models/digits", str(image_dir))
    assert (changed.returncode, changed.stdout) == (0, first.stdout)
    assert fetched < cached_files(cache_dir)  # the version fetched anew, beside the old copy
    assert b"changed in the bucket" in [path.read_bytes() for path in (cache_dir / "objects").glob(f"*/{CHANGED_FILE}")]


@pytest.mark.parametrize("what", [pytest.param("bucket", marks=pytest.mark.slow),
                                  pytest.param("model", marks=pytest.mark.slow), "push under way", "key"])
def test_predict_from_a_bucket_that_cannot_serve_exits_2_with_one_line(store, locked_s3_server, version_dir,
                                                                        image_dir, monkeypatch, capsys, what):
    upload_version(store, version_dir, "models/digits/1")
    upload_version(store, version_dir, "models/pushing/1", complete=False)
    url = {"bucket": "s3://no-such-bucket-of-models/models/digits", "model": f"{store.url}/models/nothing",
           "push under way": f"{store.url}/models/pushing"}.get(what, f"{store.url}/models/digits")
    if what == "key":
        monkeypatch.setenv("AWS_ENDPOINT_URL", locked_s3_server.endpoint)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    assert predict.main([url, str(image_dir)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1 and captured.err.startswith(f"error: {url}: ")
    expected = {"bucket": "no such bucket", "model": "no such object", "push under way": "no exported version",
                "key": "access denied"}[what]
    assert expected in captured.err and "not-the-secret" not in captured.err


# load_model


@pytest.fixture
def memory_store(monkeypatch, tmp_path) -> Iterator[str]:
    """fsspec's in-process memory store (the stand-in for gs://, which has no local server), emptied after."""
    monkeypatch.setenv("KERAS_PIPELINE_CACHE", str(tmp_path / "cache"))
    yield "memory://models-of-this-test"
    fsspec.filesystem("memory").rm("/models-of-this-test", recursive=True)


@pytest.mark.parametrize("protocol", ["s3", "memory"])
def test_load_model_from_a_bucket_gives_the_local_versions_probabilities(request, version_dir, protocol):
    if protocol == "s3":
        s3 = request.getfixturevalue("store")
        upload_version(s3, version_dir, "models/digits/1")
        url = f"{s3.url}/models/digits/1"
    else:
        url = f"{request.getfixturevalue('memory_store')}/digits/1"
        fs = fsspec.filesystem("memory")
        fs.put([str(path) for path in sorted(version_dir.rglob("*")) if path.is_file()],
               [f"{url}/{path.relative_to(version_dir).as_posix()}" for path in sorted(version_dir.rglob("*"))
                if path.is_file()])
    pixels = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 1)).astype(np.float32)
    model = load_model(url)
    assert (model.name, model.version, model.class_names) == ("digits", 1, tuple(map(str, range(10))))
    np.testing.assert_array_equal(model.probabilities(pixels), load_exported(version_dir).probabilities(pixels))


# the server


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    def versions(self, name: str = "digits") -> list[str]:
        return [entry["version"] for entry in requests.get(f"{self.url}/v1/models/{name}", timeout=10).json()
                .get("model_version_status", [])]

    def wait_for_versions(self, versions: list[str], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.versions() == versions:
                return
            time.sleep(0.1)
        raise AssertionError(f"versions {versions} not served within {timeout} s:\n{self.log()}")


def start_server(env: dict[str, str], log_path: Path, *args: str, timeout: float = 60) -> Server:
    """`python -m pipeline.serve ARGS --port 0`, once it answers /v2/health/ready."""
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "pipeline.serve", "--port", "0", *args], cwd=REPO_DIR,
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        if found := re.search(r"listening on (http://[\d.]+:\d+)", log_path.read_text()):
            try:
                if requests.get(found.group(1) + "/v2/health/ready", timeout=5).status_code == 200:
                    return Server(process, found.group(1), log_path)
            except requests.ConnectionError:
                pass
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"server not ready in {timeout} s:\n{log_path.read_text()}")


@pytest.mark.slow  # 7 s: a server following a bucket through a push and a deletion
def test_serve_follows_the_complete_versions_of_a_bucket(s3, version_dir, tmp_path, monkeypatch):
    upload_version(s3, version_dir, "models/digits/1")
    env = {**QUIET_ENV, **s3.env, "KERAS_PIPELINE_CACHE": str(tmp_path / "cache")}
    server = start_server(env, tmp_path / "server.log", "--models", f"{s3.url}/models", "--poll-seconds", "0.2")
    try:
        pixels = np.random.default_rng(2).integers(0, 256, (3, 8, 8, 1))
        answer = requests.post(f"{server.url}/v1/models/digits:predict", json={"instances": pixels.tolist()},
                               timeout=30).json()
        np.testing.assert_allclose(answer["predictions"], load_exported(version_dir).probabilities(pixels), atol=1e-6)

        pushed = push_another_export(s3, version_dir, tmp_path, monkeypatch)  # the pusher's own code, as a run's
        assert pushed.number == 2  # after the bucket's newest, 1
        server.wait_for_versions(["2"])
        upload_version(s3, version_dir, "models/digits/3", complete=False)  # a push under way: no version yet
        time.sleep(0.5)  # more polls, each seeing 3 without its metadata.json
        assert server.versions() == ["2"]

        s3.client().delete_objects(Bucket=s3.bucket, Delete={"Objects": [{"Key": key} for key in
                                                                         s3.keys("models/digits/2/")]})
        server.wait_for_versions(["1"])  # removed from the bucket: the older version served again
    finally:
        server.process.terminate()
        server.process.wait(timeout=30)
    log = server.log()
    assert "serving digits versions [2] (was [1])" in log and "serving digits versions [1] (was [2])" in log
    assert len(re.findall(r"fetched \d+ objects .* of s3://\S+/models/digits/1 ", log)) == 1, log  # at start only


def push_another_export(s3, version_dir: Path, tmp_path: Path, monkeypatch):
    """A copy of `version_dir` with its own metadata.json (another export), pushed by `components.push`."""
    from components.push import push_version

    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    other = tmp_path / "other" / "digits" / "1"
    shutil.copytree(version_dir, other)
    metadata = json.loads((other / METADATA_FILE).read_text())
    (other / METADATA_FILE).write_text(json.dumps({**metadata, "run_id": "another-run"}))
    return push_version(other, f"{s3.url}/models/digits")


@pytest.mark.parametrize("what", ["bucket", "folder", "version"])
def test_serve_from_a_bucket_that_cannot_serve_exits_2_with_one_line(store, version_dir, capsys, what):
    upload_version(store, version_dir, "models/digits/1")
    url = {"bucket": "s3://no-such-bucket-of-models/models", "folder": f"{store.url}/nothing",
           "version": f"{store.url}/models/digits/1"}[what]
    assert serve.main(["--models", url, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {url}: ")


def test_a_failing_sync_is_logged_once_and_what_is_served_stays(tmp_path, caplog):
    (tmp_path / "digits" / "1").mkdir(parents=True)
    (tmp_path / "digits" / "1" / METADATA_FILE).write_text("{}")
    failures = []

    def sync() -> None:
        if failures:
            raise UserError(f"s3://bucket/models: cannot reach the store ({failures[-1]})")

    repository = ModelRepository(tmp_path, "onnx", sync=sync,
                                 load=lambda path, backend: SimpleNamespace(name=path.parent.name, version=path.name))
    repository.refresh()
    failures.append("down")
    with caplog.at_level(logging.INFO, logger="pipeline.serving.models"):
        for _ in range(3):
            repository.refresh()
        assert list(repository.model("digits").versions) == [1]
        failures.clear()
        repository.refresh()
    messages = [record.getMessage() for record in caplog.records]
    assert [message for message in messages if "cannot update" in message] == [
        f"cannot update {tmp_path} (still serving what it served; retried every poll): s3://bucket/models: "
        "cannot reach the store (down)"]
    assert f"updating {tmp_path} works again" in messages


def _version_folder(path: Path, marker: str) -> Path:
    path.mkdir(parents=True)
    (path / METADATA_FILE).write_text(json.dumps({"marker": marker}))
    return path


def test_a_mirror_keeps_older_versions_it_fetched_while_the_bucket_holds_them(tmp_path):
    from components.bucket_models import link_versions

    mirror, one, two = tmp_path / "mirror", tmp_path / "objects" / "one", tmp_path / "objects" / "two"
    _version_folder(one, "1"), _version_folder(two, "2")
    link_versions(mirror, {("digits", 1): one})
    link_versions(mirror, {("digits", 2): two}, keep={("digits", 1), ("digits", 2)})  # num_versions=1: only 2
    assert sorted(path.name for path in (mirror / "digits").iterdir()) == ["1", "2"]  # 1: the fallback
    link_versions(mirror, {("digits", 2): two}, keep={("digits", 2)})  # 1 deleted from the bucket
    assert sorted(path.name for path in (mirror / "digits").iterdir()) == ["2"]


def test_the_server_reloads_a_version_whose_mirror_link_moved(tmp_path):
    loads = []

    def load(version_dir: Path, backend: str):
        loads.append(json.loads((version_dir / METADATA_FILE).read_text())["marker"])
        return SimpleNamespace(name=version_dir.parent.name, version=int(version_dir.name), marker=loads[-1])

    first, second = _version_folder(tmp_path / "a", "first"), _version_folder(tmp_path / "b", "second")
    (tmp_path / "mirror" / "digits").mkdir(parents=True)
    (tmp_path / "mirror" / "digits" / "1").symlink_to(first, target_is_directory=True)
    repository = ModelRepository(tmp_path / "mirror", "onnx", load=load)
    repository.refresh()
    repository.refresh()  # unchanged: not loaded again
    (tmp_path / "mirror" / "digits" / "1").unlink()
    (tmp_path / "mirror" / "digits" / "1").symlink_to(second, target_is_directory=True)  # same number, new files
    repository.refresh()
    assert loads == ["first", "second"] and repository.models["digits"].versions[1].marker == "second"
