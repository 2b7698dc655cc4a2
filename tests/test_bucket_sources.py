"""Sources in a bucket (issue 22 §1): idx:, npz: and folder: from s3:// (a real S3 API, moto's server) and
memory:// (fsspec's own store, standing in for gs://), through the real CLI where it matters."""

from __future__ import annotations

import numpy as np
import pytest

from components.config import DataConfig
from components.errors import UserError
from components.ingest import ingest
from components.sources import read_source
from pipeline.fingerprint import source_state
from tests.conftest import make_images, run_pipeline_cli, write_idx, write_image_folder


@pytest.fixture
def sources(tmp_path, idx_dir, image_folder):
    """One local source of each kind (the npz holds the idx folder's arrays; the folder has train/ and test/)."""
    npz_path = tmp_path / "data.npz"
    np.savez(npz_path, x_train=make_images(20)[0][..., 0], y_train=make_images(20)[1],
             x_test=make_images(10, seed=1)[0][..., 0], y_test=make_images(10, seed=1)[1])
    split_folder = tmp_path / "split-folder"
    write_image_folder(split_folder / "train", *make_images(12))
    write_image_folder(split_folder / "test", *make_images(4, seed=1))
    return {"idx": idx_dir, "npz": npz_path, "folder": image_folder, "split-folder": split_folder}


def upload(store, local, prefix: str) -> str:
    """`local` (a folder or a file) copied to the bucket under `prefix`; returns its URL."""
    if local.is_dir():
        store.put_tree(local, prefix)
    else:
        store.client().upload_file(str(local), store.bucket, prefix)
    return f"{store.url}/{prefix}"


def data_sha256(source: str, out_dir) -> str:
    return ingest(DataConfig(source=source), out_dir).data_sha256


@pytest.mark.parametrize("kind", ["idx", "npz", pytest.param("folder", marks=pytest.mark.slow), "split-folder"])
def test_a_bucket_source_ingests_the_same_data_as_its_local_copy(store, sources, tmp_path, kind):
    url = upload(store, sources[kind], f"data/{kind}")
    source_kind = kind.removeprefix("split-")
    assert data_sha256(f"{source_kind}:{url}", tmp_path / "remote") == \
        data_sha256(f"{source_kind}:{sources[kind]}", tmp_path / "local")


def test_a_source_on_the_memory_store_the_stand_in_for_gs(sources, tmp_path):
    import fsspec

    memory = fsspec.filesystem("memory")
    memory.put(str(sources["split-folder"]), "/gcs-like/flowers", recursive=True)
    assert data_sha256("folder:memory://gcs-like/flowers", tmp_path / "remote") == \
        data_sha256(f"folder:{sources['split-folder']}", tmp_path / "local")
    state = source_state("folder:memory://gcs-like/flowers")
    assert len(state) == 12 * 3 + 4 * 3 and state[0][:2] == ("test/a/00000.png", (sources["split-folder"] / "test" /
                                                                                 "a" / "00000.png").stat().st_size)


def test_nested_files_are_split_as_the_same_local_folder_splits_them(tmp_path):
    import fsspec

    images, labels = make_images(12)
    paths = write_image_folder(tmp_path / "nested", images, labels)
    for index, path in enumerate(paths[::2]):  # half the files one folder down: "a/x/1.png" beside "a/x-1.png"
        target = path.parent / "x" / path.name if index % 2 else path.parent / f"x-{path.name}"
        target.parent.mkdir(exist_ok=True)
        path.rename(target)
    fsspec.filesystem("memory").put(str(tmp_path / "nested"), "/nested-test", recursive=True)
    assert data_sha256("folder:memory://nested-test", tmp_path / "remote") == \
        data_sha256(f"folder:{tmp_path / 'nested'}", tmp_path / "local")


@pytest.mark.slow  # 7 s: botocore's attempts at each concurrent fetch; the reader's own test: test_remote.py
def test_a_store_failing_while_a_folder_is_read_stops_ingest_in_one_line(store, sources, monkeypatch, tmp_path):
    url = upload(store, sources["folder"], "images")
    folder = read_source(DataConfig(source=f"folder:{url}"))  # listed while the store is there
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    from components.image_folder import decode_chunks

    with pytest.raises(UserError, match=r"^s3://.*: cannot reach the store"):
        next(decode_chunks(folder.train_files, np.arange(len(folder.train_files.paths)), folder.image_format))


@pytest.mark.slow  # three runs of the CLI, 9 s
def test_through_the_cli_a_changed_object_reruns_ingest_and_nothing_else_does(store, sources, tmp_path):
    url = upload(store, sources["idx"], "mnist-like")
    first = run_pipeline_cli(tmp_path, "--until", "ingest", f"data.source=idx:{url}", env=store.env)
    assert first.returncode == 0, first.stderr
    again = run_pipeline_cli(tmp_path, "--until", "ingest", f"data.source=idx:{url}", env=store.env)
    assert [stage["status"] for stage in again.manifest["stages"]] == ["cached"]
    labels = make_images(10, seed=1)[1]
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[::-1].copy())  # same size, other content
    store.client().upload_file(str(tmp_path / "t10k-labels-idx1-ubyte.gz"), store.bucket,
                               "mnist-like/t10k-labels-idx1-ubyte.gz")
    changed = run_pipeline_cli(tmp_path, "--until", "ingest", f"data.source=idx:{url}", env=store.env)
    assert [stage["status"] for stage in changed.manifest["stages"]] == ["succeeded"]
    assert changed.manifest["results"]["data_fingerprint"] != first.manifest["results"]["data_fingerprint"]


@pytest.mark.slow  # 5 s; the same code in process: test_a_bucket_source_ingests_the_same_data_as_its_local_copy
def test_through_the_cli_a_folder_in_a_bucket_is_ingested(store, sources, tmp_path):
    url = upload(store, sources["folder"], "images")
    run = run_pipeline_cli(tmp_path, "--until", "ingest", f"data.source=folder:{url}", env=store.env)
    assert run.returncode == 0, run.stderr
    assert run.manifest["results"]["data_fingerprint"] == data_sha256(f"folder:{sources['folder']}", tmp_path / "l")
    assert run.manifest["config"]["data"]["source"] == f"folder:{url}"
    assert "images" in run.manifest["results"].get("model_name", "images")


@pytest.mark.parametrize("failure", [pytest.param("bucket", marks=pytest.mark.slow),
                                     pytest.param("object", marks=pytest.mark.slow), "key"])
def test_through_the_cli_each_failure_is_one_line_and_exit_2(store, locked_s3_server, sources, tmp_path, failure):
    url = upload(store, sources["idx"], "mnist-like")
    env = dict(store.env)
    if failure == "bucket":
        url = url.replace(store.bucket, "no-such-bucket-at-all")
    if failure == "object":
        url = f"{store.url}/not-uploaded"
    if failure == "key":
        env.update(AWS_ENDPOINT_URL=locked_s3_server.endpoint, AWS_SECRET_ACCESS_KEY="not-the-secret")
    run = run_pipeline_cli(tmp_path, "--until", "ingest", f"data.source=idx:{url}", env=env)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {url}: "), run.stderr
    assert {"bucket": "no such bucket", "object": "no such object", "key": "access denied"}[failure] in lines[0]
    assert "not-the-secret" not in run.stderr and store.secret not in run.stderr
    assert not list((tmp_path / "cache").rglob("splits.json")) if (tmp_path / "cache").exists() else True


# An unreachable endpoint takes botocore's three attempts (3-4 s): tested once, on the listing every kind starts with.
@pytest.mark.parametrize("failure", ["bucket", "object", "key", pytest.param("endpoint", marks=pytest.mark.slow)])
# Every kind lists its objects first: idx in the default suite, npz and folder in the slow one.
@pytest.mark.parametrize("kind", ["idx", pytest.param("npz", marks=pytest.mark.slow),
                                  pytest.param("folder", marks=pytest.mark.slow)])
def test_every_kind_fails_in_one_line_naming_the_url(store, locked_s3_server, sources, monkeypatch, kind, failure):
    url = upload(store, sources[kind], f"data/{kind}")
    url = {"bucket": url.replace(store.bucket, "no-such-bucket-at-all"), "object": f"{store.url}/gone"}.get(failure,
                                                                                                           url)
    if failure == "key":
        monkeypatch.setenv("AWS_ENDPOINT_URL", locked_s3_server.endpoint)
    if failure == "endpoint":
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    for step in (lambda: source_state(f"{kind}:{url}"), lambda: read_source(DataConfig(source=f"{kind}:{url}"))):
        with pytest.raises(UserError) as raised:
            step()
        assert str(raised.value).startswith(f"{url}: ") and "\n" not in str(raised.value)


def test_a_corrupt_object_is_one_line_naming_it(store, sources, tmp_path):
    url = upload(store, sources["idx"], "mnist-like")
    store.client().put_object(Bucket=store.bucket, Key="mnist-like/t10k-labels-idx1-ubyte.gz", Body=b"\x1f\x8b\x08no")
    with pytest.raises(UserError, match=r"^s3://.*/mnist-like/t10k-labels-idx1-ubyte.gz: cannot read it"):
        read_source(DataConfig(source=f"idx:{url}"))


def test_a_bucket_url_is_refused_for_sources_that_cannot_read_one():
    with pytest.raises(UserError, match="idx:, npz: and folder: sources only"):
        DataConfig(source="tfds:s3://bucket/mnist").check_together()
