"""The push stage (components/push.py) against a real S3 endpoint (moto's server): what a run publishes to a
bucket, what it records, how it fails, and that a reader of the bucket never sees half a version."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from components import push, remote
from components.artifacts import ExportedModel, PushedModel
from components.config import ExportConfig
from components.errors import UserError
from pipeline import run
from tests.conftest import QUIET_ENV, REPO_DIR, SMOKE_OVERRIDES, run_pipeline_cli


@pytest.fixture(scope="module")
def workdir(smoke_run, tmp_path_factory):
    """A copy of the shared smoke run's workdir: a rerun of its command finds training and export cached."""
    copy = tmp_path_factory.mktemp("push") / "work"
    shutil.copytree(smoke_run.workdir, copy, symlinks=True)
    return copy


@pytest.fixture
def version_dir(smoke_run, tmp_path):
    """A copy of the smoke run's exported version folder, `digits/1`."""
    copy = tmp_path / "digits" / "1"
    shutil.copytree(smoke_run.workdir / "saved_models" / "digits" / "1", copy)
    return copy


@pytest.fixture
def bucket(store, monkeypatch):
    """`store`, reached by this process's store calls through one client (a new one for each call costs 0.2 s)."""
    filesystem = remote.filesystem
    shared = {}

    def shared_filesystem(url: str):
        fs = shared.setdefault("fs", filesystem(url)[0])
        return fs, fs._strip_protocol(url)

    monkeypatch.setattr(remote, "filesystem", shared_filesystem)
    return store


@pytest.fixture
def small_version_dir(tmp_path):
    """A version folder of a few bytes, laid out as an export's: for what numbering and checking do, which read no
    model (a real export's dozen files make each push a second slower)."""
    version_dir = tmp_path / "small" / "digits" / "1"
    for name, content in {"variables/variables.index": "index", "variables/variables.data-00000-of-00001": "data",
                          "saved_model.pb": "graph", "model.onnx": "onnx",
                          "metadata.json": '{"model": "small"}\n'}.items():
        (version_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (version_dir / name).write_text(content)
    return version_dir


def local_md5s(version_dir: Path) -> dict[str, str]:
    """Every file of a version folder, by relative path, with the md5 that S3 gives a one-part object as ETag."""
    return {path.relative_to(version_dir).as_posix(): hashlib.md5(path.read_bytes()).hexdigest()
            for path in version_dir.rglob("*") if path.is_file()}


def bucket_md5s(s3, prefix: str, client=None) -> dict[str, str]:
    """Every object under `prefix/` of the test's bucket, by the rest of its key, with its ETag: one listing."""
    pages = (client or s3.client()).get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix + "/")
    return {item["Key"][len(prefix) + 1:]: item["ETag"].strip('"') for page in pages
            for item in page.get("Contents", [])}


@pytest.mark.slow  # four runs of the CLI: about 25 s
def test_a_run_pushes_its_version_a_rerun_finds_it_cached_and_a_deleted_version_is_pushed_again(
        workdir, smoke_run, s3):
    args = ("--preset", "smoke", *SMOKE_OVERRIDES, f"export.push_to={s3.url}/models")
    first = run_pipeline_cli(workdir, *args, env=s3.env)
    assert first.returncode == 0, first.stderr
    statuses = {stage["name"]: stage["status"] for stage in first.manifest["stages"]}
    # push_to is no part of export's key: only push, and the report (it shows the changed setting), run.
    assert statuses == {**{name: "cached" for name in statuses}, "tune": "skipped", "push": "succeeded",
                        "report": "succeeded"}
    results = first.manifest["results"]
    version_url = f"{s3.url}/models/digits/{results['version']}"
    assert results["pushed_to"] == version_url and results["push"] == "pushed"
    assert f"pushed       {version_url} (pushed)" in first.stdout
    local = local_md5s(Path(results["version_dir"]))
    published = {f"{results['version']}/{name}": md5 for name, md5 in local.items()}
    assert bucket_md5s(s3, "models/digits") == published  # no staging objects left
    client = s3.client()
    metadata = client.get_object(Bucket=s3.bucket, Key=f"models/digits/{results['version']}/metadata.json")
    assert metadata["Body"].read() == (Path(results["version_dir"]) / "metadata.json").read_bytes()

    shown = subprocess.run([sys.executable, "-m", "pipeline.runs", "--workdir", str(workdir), "show",
                            first.manifest["run_id"]], env=QUIET_ENV, cwd=REPO_DIR, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert any(line.split()[:2] == ["pushed_to", version_url] for line in shown.stdout.splitlines())
    assert any(line.split()[0] == "push" and line.split()[1:] == ["pushed"] for line in shown.stdout.splitlines()
               if line.strip())

    # While the bucket holds the version whole, push is cached (checked by one listing and one read), and a run
    # of the report alone finds it so.
    again = run_pipeline_cli(workdir, *args, env=s3.env)
    assert again.returncode == 0, again.stderr
    assert {stage["name"]: stage["status"] for stage in again.manifest["stages"]}["push"] == "cached"
    assert (again.manifest["results"]["pushed_to"], again.manifest["results"]["push"]) == (version_url, "pushed")
    report_only = run_pipeline_cli(workdir, *args, "--only", "report", env=s3.env)
    assert report_only.returncode == 0, report_only.stderr
    assert bucket_md5s(s3, "models/digits") == published

    # A version deleted from the bucket (by hand, by a lifecycle rule) is pushed again by the next run.
    client.delete_objects(Bucket=s3.bucket, Delete={"Objects": [{"Key": f"models/digits/{key}"} for key in published]})
    restored = run_pipeline_cli(workdir, *args, env=s3.env)
    assert restored.returncode == 0, restored.stderr
    assert {stage["name"]: stage["status"] for stage in restored.manifest["stages"]}["push"] == "succeeded"
    assert restored.manifest["results"]["push"] == "pushed"
    assert bucket_md5s(s3, "models/digits") == published


@pytest.mark.slow  # a run of the CLI on a copy of the smoke workdir
def test_a_push_to_a_missing_bucket_fails_the_run_in_one_line_and_keeps_the_export(workdir, s3):
    url = "s3://no-such-bucket-for-push/models"
    failed = run_pipeline_cli(workdir, "--preset", "smoke", *SMOKE_OVERRIDES, f"export.push_to={url}", env=s3.env)
    assert failed.returncode == 2
    last_line = failed.stderr.splitlines()[-1]  # after the stages' progress lines
    assert last_line.startswith(f"error: {url}/digits: no such bucket") and "Traceback" not in failed.stderr, \
        failed.stderr
    manifest = failed.manifest
    assert manifest["status"] == "failed"
    assert (manifest["stages"][-1]["name"], manifest["stages"][-1]["status"]) == ("push", "failed")
    assert manifest["error"].startswith(f"{url}/digits: no such bucket")
    assert (workdir / "saved_models" / "digits" / "1" / "metadata.json").is_file()
    statuses = {stage["name"]: stage["status"] for stage in manifest["stages"]}
    assert statuses["export"] == "cached" and "report" not in statuses


def put_object(s3, key: str, body: bytes) -> None:
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=body)


def other_metadata(version_dir: Path, same_size: bool = False) -> bytes:
    """The `metadata.json` of another model: other bytes, of the local file's size if `same_size`."""
    local = (version_dir / "metadata.json").read_bytes()
    return local[:-1] + (b"#" if local[-1:] != b"#" else b"$") if same_size else b'{"another": "model"}\n'


def test_a_version_is_numbered_after_the_buckets_newest_and_the_same_export_is_found_under_its_number(
        small_version_dir, bucket, monkeypatch):
    model_url = f"{bucket.url}/models/digits"
    local = local_md5s(small_version_dir)
    # Another workdir pushed 1 and 7 (a fresh CI workdir, another machine); killed pushes left 5/ and 8/.
    for number in (1, 7):
        put_object(bucket, f"models/digits/{number}/metadata.json", other_metadata(small_version_dir))
    for key in ("5/saved_model.pb", "8/saved_model.pb", "8/variables/stray.bin"):
        put_object(bucket, f"models/digits/{key}", b"of a killed push")
    before = bucket_md5s(bucket, "models/digits")
    assert push.push_version(small_version_dir, model_url) == push.Publication(8, "pushed")
    after = bucket_md5s(bucket, "models/digits")
    assert {key: md5 for key, md5 in after.items() if key.startswith("8/")} == \
        {f"8/{name}": md5 for name, md5 in local.items()}  # the killed push's objects at 8 are gone
    assert {key: md5 for key, md5 in after.items() if not key.startswith("8/")} == \
        {key: md5 for key, md5 in before.items() if not key.startswith("8/")}  # 5/ is no version: left alone

    # The same export is found, whatever numbers come after it; only metadata.json of its size is read.
    put_object(bucket, "models/digits/9/metadata.json", other_metadata(small_version_dir, same_size=True))
    read_many = remote.read_many
    read: list[str] = []
    monkeypatch.setattr(remote, "read_many", lambda urls: read.extend(urls) or read_many(urls))
    pushed = bucket_md5s(bucket, "models/digits")
    assert push.push_version(small_version_dir, model_url) == push.Publication(8, "already pushed")
    assert sorted(read) == [f"{model_url}/8/metadata.json", f"{model_url}/9/metadata.json"]
    assert bucket_md5s(bucket, "models/digits") == pushed


def test_a_local_number_above_the_buckets_is_kept(small_version_dir, bucket, monkeypatch):
    put_object(bucket, "models/digits/2/metadata.json", other_metadata(small_version_dir))
    fifth = small_version_dir.parent / "5"
    small_version_dir.rename(fifth)
    assert push.push_version(fifth, f"{bucket.url}/models/digits") == push.Publication(5, "pushed")
    assert {key for key in bucket_md5s(bucket, "models/digits") if key.startswith("5/")} == \
        {f"5/{name}" for name in local_md5s(fifth)}


def test_push_records_the_buckets_number_and_says_when_it_is_not_the_local_one(small_version_dir, bucket, monkeypatch,
                                                                               tmp_path):
    put_object(bucket, "models/digits/1/metadata.json", other_metadata(small_version_dir))
    exported = ExportedModel(small_version_dir, 1, small_version_dir / "model.onnx", 0.0)
    pushed = push.push(ExportConfig(push_to=f"{bucket.url}/models"), exported, tmp_path / "push")
    version_url = f"{bucket.url}/models/digits/2"
    assert pushed.facts() == {"pushed_to": version_url, "push": "pushed"}
    assert pushed.summary() == [f"pushed       {version_url} (pushed, local version 1)"]
    record = json.loads(pushed.record_path.read_text())
    assert (record["version_url"], record["version"], record["local_version"]) == (version_url, 2, 1)
    assert record["files"] == {name: (small_version_dir / name).stat().st_size
                               for name in local_md5s(small_version_dir)}


@pytest.mark.parametrize("race", ["metadata.json of the same size", "one more object"])
def test_a_push_that_another_raced_to_the_same_number_fails_in_one_line(race, small_version_dir, bucket, monkeypatch):
    model_url = f"{bucket.url}/models/digits"
    copy_objects = remote.copy_objects

    def copy_as_another_push_lands_too(source_url: str, target_url: str, names: list[str]) -> None:
        copy_objects(source_url, target_url, names)
        if names == ["metadata.json"] and race.startswith("metadata.json"):  # the other's copy came last
            put_object(bucket, "models/digits/1/metadata.json", other_metadata(small_version_dir, same_size=True))
        elif names == ["metadata.json"]:
            put_object(bucket, "models/digits/1/variables/variables.data-00001-of-00002", b"the other model's")

    monkeypatch.setattr(remote, "copy_objects", copy_as_another_push_lands_too)
    with pytest.raises(UserError, match=rf"^{model_url}/1: another push of the same model raced this one .*; "
                                        rf"inspect {model_url}/1 "):
        push.push_version(small_version_dir, model_url)
    assert not [key for key in bucket_md5s(bucket, "models/digits") if key.startswith(".staging-")]


def test_a_cached_push_holds_only_while_the_bucket_keeps_the_version_whole(small_version_dir, bucket, tmp_path):
    exported = ExportedModel(small_version_dir, 1, small_version_dir / "model.onnx", 0.0)
    pushed = push.push(ExportConfig(push_to=f"{bucket.url}/models"), exported, tmp_path / "push")
    assert pushed.still_holds()
    client = bucket.client()
    client.delete_object(Bucket=bucket.bucket, Key="models/digits/1/model.onnx")  # a lifecycle rule, a hand
    assert not pushed.still_holds()
    put_object(bucket, "models/digits/1/model.onnx", b"onnx")
    assert pushed.still_holds()
    put_object(bucket, "models/digits/1/metadata.json", other_metadata(small_version_dir, same_size=True))
    assert not pushed.still_holds()
    gone = PushedModel(pushed.record_path, "s3://no-such-bucket-for-push/models/digits/1", "pushed", 1)
    with pytest.raises(UserError, match=r"^s3://no-such-bucket-for-push/models/digits/1: no such bucket"):
        gone.still_holds()


def test_a_copy_with_this_metadata_but_files_missing_is_refused_not_taken_for_pushed(small_version_dir, bucket):
    model_url = f"{bucket.url}/models/digits"
    assert push.push_version(small_version_dir, model_url) == push.Publication(1, "pushed")
    bucket.client().delete_object(Bucket=bucket.bucket, Key="models/digits/1/variables/variables.index")
    with pytest.raises(UserError, match=rf"^{model_url}/1 holds this export's metadata.json but not all its files "
                                        r"\(variables/variables.index differ"):
        push.push_version(small_version_dir, model_url)


@pytest.mark.parametrize("folders, expected", [
    ({}, 3), ({"1": True, "2": True}, 3), ({"1": True, "4": True}, 5), ({"4": False}, 4),
    ({"2": True, "6": False, "5": True}, 6), ({"6": True, "5": False}, 7)])
def test_a_new_version_is_numbered_above_every_numbered_folder_reusing_a_killed_push_at_the_top(folders, expected):
    present = [remote.RemoteObject(f"{number}/{name}", 1, "") for number, complete in folders.items()
               for name in (["saved_model.pb", "metadata.json"] if complete else ["saved_model.pb"])]
    present.append(remote.RemoteObject(".staging-9-0a1b2c3d/metadata.json", 1, ""))  # no number: no folder
    assert push.next_number(3, present, push.complete_versions(present)) == expected


# Runs push_version(VERSION_DIR, MODEL_URL) with every store operation one object at a time, each announced on
# stdout and started only when the test answers "go": the test reads the bucket at every step and kills the
# process at the step it chose. A group's objects are copied together by the product, in any order: one at a
# time, in the listing's order, is one of those orders.
STEPPED_PUSH = '''
import sys
from pathlib import Path
from types import SimpleNamespace

from components import push, remote


def step(line):
    print(line, flush=True)
    if sys.stdin.readline() != "go\\n":
        sys.exit(3)


def one_by_one(operation, verb):
    def stepped(url, *rest):
        names = rest[-1]
        if "/.staging-" in url and verb == "delete":  # no reader looks there: one step for all
            step(f"{verb} {url}/*")
            return operation(url, *rest)
        for name in names:
            step(f"{verb} {url}/{name}")
            operation(url, *rest[:-1], [name])
    return stepped


put_tree = remote.put_tree


def stepped_put(local_dir, url):
    step(f"put {url}")
    return put_tree(local_dir, url)


filesystem = remote.filesystem
shared = {}


def shared_filesystem(url):  # one client for the whole process: a new one for each object is slow
    fs = shared.setdefault("fs", filesystem(url)[0])
    return fs, fs._strip_protocol(url)


remote.filesystem = shared_filesystem
remote.copy_objects = one_by_one(remote.copy_objects, "copy")
remote.delete_objects = one_by_one(remote.delete_objects, "delete")
remote.put_tree = stepped_put
print("done", push.push_version(Path(sys.argv[1]), sys.argv[2]), flush=True)
'''


def check_what_a_reader_sees(objects: dict[str, str], local: dict[str, str]) -> None:
    """A version folder in the bucket holds the local bytes; with `metadata.json`, all of them; with
    `saved_model.pb`, all of its variables."""
    versions = {key.partition("/")[0] for key in objects if key.partition("/")[0].isdigit()}
    assert versions <= {"1"}, objects
    folder = {key.partition("/")[2]: md5 for key, md5 in objects.items() if key.startswith("1/")}
    assert all(local[name] == md5 for name, md5 in folder.items()), folder  # every object copied whole
    if "metadata.json" in folder:
        assert folder == local, f"metadata.json of a version missing {sorted(set(local) - set(folder))}"
    if "saved_model.pb" in folder:
        variables = {name for name in local if name.startswith("variables/")}
        assert variables and variables <= set(folder), f"saved_model.pb without {sorted(variables - set(folder))}"


def stepped_push(version_dir: Path, model_url: str, env: dict[str, str], read: Callable[[], dict[str, str]],
                 kill_at: Callable[[list[str]], bool] | None = None) -> list[str]:
    """Run the stepped push in a subprocess, checking what a reader sees at every step; SIGKILL it at the first
    step `kill_at` chooses. Returns the steps announced (the last one not started if killed)."""
    local = local_md5s(version_dir)
    process = subprocess.Popen([sys.executable, "-c", STEPPED_PUSH, str(version_dir), model_url], cwd=REPO_DIR,
                               env={**QUIET_ENV, **env}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    steps: list[str] = []
    try:
        for line in process.stdout:
            check_what_a_reader_sees(read(), local)
            steps.append(line.strip())
            if line.startswith("done") or (kill_at and kill_at(steps)):
                break
            process.stdin.write("go\n")
            process.stdin.flush()
    finally:
        process.kill()
        process.wait()
    check_what_a_reader_sees(read(), local)
    return steps


def _copying(name: str) -> Callable[[list[str]], bool]:
    return lambda steps: steps[-1].startswith("copy ") and steps[-1].endswith(f"/{name}")


def _deleting_from_version(count: int) -> Callable[[list[str]], bool]:
    return lambda steps: sum(step.startswith("delete ") and "/1/" in step for step in steps) == count


def _after_metadata_copied(steps: list[str]) -> bool:
    return any(step.endswith("/metadata.json") and step.startswith("copy ") for step in steps) and \
        steps[-1].startswith("delete ")


@pytest.mark.slow  # 11 s: a push stepped one store operation at a time, killed at five of them
def test_a_killed_push_is_never_seen_and_the_next_push_completes_and_cleans_up(version_dir, s3, monkeypatch):
    model_url = f"{s3.url}/models/digits"
    local = local_md5s(version_dir)
    assert {"saved_model.pb", "metadata.json", "variables/variables.index"} <= set(local)

    client = s3.client()

    def read() -> dict[str, str]:
        return bucket_md5s(s3, "models/digits", client)

    kill_points = [
        _copying("variables/variables.index"),  # amid the first group: some files in the version folder
        _copying("saved_model.pb"),  # after cleaning the first push's leftovers: all but the last two
        _copying("metadata.json"),  # a whole SavedModel, no metadata.json
        _deleting_from_version(2),  # cleaning that folder: saved_model.pb gone, its variables not yet
        _after_metadata_copied,  # published; its staging objects left
    ]
    for kill_at in kill_points:
        steps = stepped_push(version_dir, model_url, s3.env, read, kill_at)
        assert not steps[-1].startswith("done"), f"the push finished before its kill point: {steps}"
    assert set(read()) > {f"1/{name}" for name in local}, "the last kill left no staging objects"

    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    assert push.push_version(version_dir, model_url) == push.Publication(1, "already pushed")
    assert read() == {f"1/{name}": md5 for name, md5 in local.items()}  # the staging objects are gone

    remote.delete_objects(f"{model_url}/1", ["metadata.json"])  # as a push killed before its last copy leaves it
    client.put_object(Bucket=s3.bucket, Key="models/digits/1/stray.bin", Body=b"of another killed push")
    assert push.push_version(version_dir, model_url) == push.Publication(1, "pushed")
    assert read() == {f"1/{name}": md5 for name, md5 in local.items()}


@pytest.mark.parametrize("value", ["/tmp/models", "saved_models", "file:///tmp/models", "s3://"])
def test_a_push_to_that_is_no_bucket_url_is_refused_before_any_stage(value, tmp_path, capsys):
    assert run.main(["--workdir", str(tmp_path / "work"), "--preset", "smoke", f"export.push_to={value}"]) == 2
    stderr = capsys.readouterr().err
    assert stderr == (f"error: export.push_to={value!r} cannot work; use \"\" or a bucket URL such as "
                      "s3://BUCKET/models or gs://BUCKET/models (the local copy is saved_models/ already) "
                      "(default: '')\n")
    assert not (tmp_path / "work").exists()
