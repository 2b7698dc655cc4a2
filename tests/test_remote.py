"""components/remote.py against a real S3 endpoint (moto's server) and fsspec's memory store."""

from __future__ import annotations

import pytest

from components import remote
from components.errors import UserError


@pytest.mark.parametrize("location, expected", [
    ("s3://bucket/data", True), ("gs://bucket", True), ("memory://x", True), ("file:///tmp/x", False),
    ("/tmp/x", False), ("relative/a://b", False), ("idx:/usr/share", False), ("C://x", False)])
def test_is_url(location, expected):
    assert remote.is_url(location) is expected


def test_listing_names_sizes_and_identities_that_change_with_the_object(store):
    client = store.client()
    client.put_object(Bucket=store.bucket, Key="data/a.bin", Body=b"one")
    client.put_object(Bucket=store.bucket, Key="data/sub/b.bin", Body=b"two!")
    before = remote.list_objects(f"{store.url}/data")
    assert [(item.name, item.size) for item in before] == [("a.bin", 3), ("sub/b.bin", 4)]
    assert all(item.identity.startswith("ETag=") for item in before)
    client.put_object(Bucket=store.bucket, Key="data/a.bin", Body=b"eno")  # same size, other content
    after = remote.list_objects(f"{store.url}/data")
    assert after[0].identity != before[0].identity and after[1] == before[1]
    assert remote.identities_digest(after) != remote.identities_digest(before)
    assert remote.list_objects(f"{store.url}/data/a.bin") == [after[0]]  # one object: named by its own name


@pytest.mark.parametrize("what", ["bucket", "object", "key",
                                  pytest.param("endpoint", marks=pytest.mark.slow)])  # botocore's 3 attempts: 4 s
def test_each_failure_is_one_line_naming_the_url(store, locked_s3_server, monkeypatch, what):
    store.client().put_object(Bucket=store.bucket, Key="data/a.bin", Body=b"one")
    url = {"bucket": "s3://no-such-bucket-here/data", "object": f"{store.url}/nothing/here"}.get(what,
                                                                                              f"{store.url}/data")
    if what == "key":
        monkeypatch.setenv("AWS_ENDPOINT_URL", locked_s3_server.endpoint)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    if what == "endpoint":
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(UserError) as raised:
        remote.list_objects(url)
    message = str(raised.value)
    assert message.startswith(f"{url}: ") and "\n" not in message
    expected = {"bucket": "no such bucket", "object": "no such object", "key": "access denied",
                "endpoint": "cannot reach the store"}[what]
    assert expected in message
    assert "not-the-secret" not in message and store.secret not in message


def test_fetch_tree_is_cached_by_the_objects_identities(store, tmp_path):
    client = store.client()
    client.put_object(Bucket=store.bucket, Key="model/1/a.txt", Body=b"first")
    client.put_object(Bucket=store.bucket, Key="model/1/variables/v.bin", Body=b"\x00\x01")
    local = remote.fetch_tree(f"{store.url}/model/1")
    assert (local / "a.txt").read_bytes() == b"first" and (local / "variables" / "v.bin").read_bytes() == b"\x00\x01"
    assert remote.fetch_tree(f"{store.url}/model/1") == local
    client.put_object(Bucket=store.bucket, Key="model/1/a.txt", Body=b"again")
    changed = remote.fetch_tree(f"{store.url}/model/1")
    assert changed != local and (changed / "a.txt").read_bytes() == b"again"
    assert not [path for path in changed.parent.iterdir() if path.name.startswith(".")]


def test_read_many_returns_bytes_and_the_error_of_a_missing_object(store):
    store.client().put_object(Bucket=store.bucket, Key="x/a", Body=b"A")
    contents = remote.read_many([f"{store.url}/x/a", f"{store.url}/x/missing"])
    assert contents[f"{store.url}/x/a"] == b"A"
    assert isinstance(contents[f"{store.url}/x/missing"], Exception)


def test_put_and_copy_objects_on_the_memory_store(tmp_path):
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "a").write_bytes(b"A")
    (tmp_path / "tree" / "sub" / "b").write_bytes(b"B")
    assert remote.put_tree(tmp_path / "tree", "memory://test-put/staging") == ["a", "sub/b"]
    remote.copy_objects("memory://test-put/staging", "memory://test-put/final", ["sub/b", "a"])
    assert [(item.name, item.size) for item in remote.list_objects("memory://test-put/final")] == [("a", 1),
                                                                                                ("sub/b", 1)]


def test_an_unknown_protocol_is_one_line():
    with pytest.raises(UserError, match="no-such-protocol://x: .*fsspec URL"):
        remote.list_objects("no-such-protocol://x")


def test_a_store_failing_while_objects_are_read_raises_and_is_never_a_bad_object(store, locked_s3_server,
                                                                                  monkeypatch):
    store.client().put_object(Bucket=store.bucket, Key="x/a", Body=b"A")
    monkeypatch.setenv("AWS_ENDPOINT_URL", locked_s3_server.endpoint)  # the key is refused after the listing
    with pytest.raises(UserError, match=r"^s3://.*/x/a: access denied"):
        remote.read_many([f"{store.url}/x/a", f"{store.url}/x/b"])


def test_a_relative_cache_folder_is_made_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KERAS_PIPELINE_CACHE", "cache")
    assert remote.cache_root() == tmp_path / "cache"


def test_an_object_changed_between_listing_and_download_is_not_kept_under_the_old_key(store, tmp_path):
    client = store.client()
    client.put_object(Bucket=store.bucket, Key="v/1/a.bin", Body=b"before")
    listed = remote.list_objects(f"{store.url}/v/1")
    client.put_object(Bucket=store.bucket, Key="v/1/a.bin", Body=b"after!")  # same size, new content
    with pytest.raises(UserError, match=r"v/1/a.bin: changed while it was downloaded"):
        remote.fetch_tree(f"{store.url}/v/1", listed, cache_dir=tmp_path / "objects")
    assert [path.name for path in (tmp_path / "objects").iterdir()] == []  # nothing half-made left


def test_a_local_folder_that_cannot_be_written_is_named_not_blamed_on_the_store(store, tmp_path):
    store.client().put_object(Bucket=store.bucket, Key="v/1/a.bin", Body=b"A")
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(UserError) as raised:
        remote.fetch_tree(f"{store.url}/v/1", cache_dir=tmp_path / "a-file" / "objects")
    assert str(raised.value).startswith(f"{tmp_path / 'a-file' / 'objects'}: ") and "store" not in str(raised.value)


def test_without_an_etag_or_generation_everything_the_listing_says_is_the_identity():
    assert remote._identity({"name": "a", "size": 1, "modify": "10:00"}) != \
        remote._identity({"name": "a", "size": 1, "modify": "10:01"})
    assert remote._identity({"name": "a", "size": 1, "ETag": '"x"', "modify": "10:00"}) == 'ETag="x"'


@pytest.mark.parametrize("url", ["s3://", "s3://Bad_Bucket!/x"])
def test_a_url_that_names_no_object_is_one_line(store, url):
    with pytest.raises(UserError) as raised:
        remote.list_objects(url)
    assert str(raised.value).startswith(f"{url}: ") and "\n" not in str(raised.value)
