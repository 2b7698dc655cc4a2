"""Buckets: data read from, and models published to, `s3://`, `gs://` or any other fsspec URL.

Why fsspec: S3 left TensorFlow in 2.6 and tensorflow-io, which carried it, has no build for TF 2.16+;
fsspec, with s3fs and gcsfs (`pip install -e ".[cloud]"`), is the maintained way to reach a bucket
from Python, and its `memory://` store runs the same code in tests.

Credentials and endpoints come from each store's own environment, never from a config: for S3
`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE` and the rest of
botocore's chain; for GCS Application Default Credentials. Nothing of them is logged or written:
what goes wrong with a store becomes one line naming the URL (`store_errors`).

An object's identity is its ETag (S3), generation (GCS) or what else the store gives, with its size:
a changed object changes it, and it costs one listing, no download.

It loads no TensorFlow: predict and the server reach buckets through it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence

from components.errors import UserError, first_line

log = logging.getLogger(__name__)

LOCAL_PROTOCOLS = ("file", "local")
# Which package reaches which store, for the message when it is not installed.
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}
# botocore's defaults wait 60 s for a connection and 60 s for each read, and s3fs retries timeouts 5 times
# on top of botocore's own attempts: an endpoint that is down, or that takes connections and never answers,
# would take minutes to report (up to a quarter of an hour). Here botocore makes 3 attempts (standard mode:
# throttling too) of at most 5 s to connect and 10 s between bytes, and s3fs no more: a refused connection
# is reported in about 3 s, a silent endpoint in 44 s (4 connections; measured against a socket that never answers).
S3_OPTIONS = {"config_kwargs": {"connect_timeout": 5, "read_timeout": 10,
                                "retries": {"max_attempts": 3, "mode": "standard"}}}
S3FS_ATTEMPTS = 1  # s3fs's own loop around each call (its default 5), beside botocore's attempts
# Fields that name one state of an object, in the order they are preferred.
IDENTITY_FIELDS = ("ETag", "generation", "etag", "md5Hash", "VersionId", "mtime", "LastModified", "updated",
                   "created")
CREDENTIALS_ADVICE = ("check the credentials in the store's environment (AWS_ACCESS_KEY_ID and "
                      "AWS_SECRET_ACCESS_KEY or AWS_PROFILE for s3://, Application Default Credentials for gs://)")
ENDPOINT_ADVICE = "check the endpoint (AWS_ENDPOINT_URL for s3://) and the network"
FETCHING_PREFIX = ".fetching-"  # a download under way in the cache, renamed into place when whole


@dataclass(frozen=True, order=True)
class RemoteObject:
    """One object under a URL: its path relative to that URL, its size and its identity (ETag, generation)."""

    name: str
    size: int
    identity: str


def is_url(location: str | Path) -> bool:
    """True for `PROTOCOL://...` other than a local file URL."""
    protocol, separator, _ = str(location).partition("://")
    return bool(separator) and protocol not in LOCAL_PROTOCOLS and re.fullmatch(r"[a-z][a-z0-9+.-]*", protocol) \
        is not None


def join(url: str, *names: str) -> str:
    """`url/name/...`, with one slash between parts."""
    return "/".join([url.rstrip("/"), *(name.strip("/") for name in names)])


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec file system for `url` and the path in it, with this module's S3 time limits.

    A new instance each time (fsspec caches instances by their arguments, so a changed endpoint or
    key in the environment would otherwise go unseen in a long-lived process).

    Raises:
        UserError: an unknown protocol, or its package (s3fs, gcsfs) is not installed.
    """
    import fsspec

    protocol = url.partition("://")[0]
    options = S3_OPTIONS if protocol in ("s3", "s3a") else {}
    try:
        fs, path = fsspec.core.url_to_fs(url, skip_instance_cache=True, **options)
    except ImportError:
        package = PACKAGES.get(protocol, f"the fsspec package for {protocol}://")
        raise UserError(f"{url}: reading {protocol}:// needs {package}, which is not installed; "
                        f"pip install -e \".[cloud]\"") from None
    except ValueError as error:
        raise UserError(f"{url}: {first_line(error)}; use s3://BUCKET/PATH, gs://BUCKET/PATH or another "
                        "fsspec URL") from None
    if options:
        fs.retries = S3FS_ATTEMPTS
    return fs, path


@contextlib.contextmanager
def store_errors(url: str) -> Iterator[None]:
    """What a store raises in the block, as one line naming `url`: missing, denied or unreachable.

    Store libraries raise their own types for a connection that fails (botocore, aiohttp, google-auth):
    any exception from such a module counts as one, so none reaches the user as a traceback. An OS error
    that names a local file (a full disk while downloading) is said as one, not blamed on the store.
    """
    try:
        yield
    except UserError:
        raise
    except OSError as error:
        if error.filename is not None and not is_url(str(error.filename)) and error.errno is not None:
            raise UserError(f"{error.filename}: {error.strerror or first_line(error)} (while copying {url}); "
                            "check the local folder: free space, permissions") from None
        raise UserError(store_failure(url, error)) from None
    except ValueError as error:  # fsspec's and botocore's way of saying the URL cannot name an object
        raise UserError(f"{url}: not a usable URL ({first_line(error)}); use s3://BUCKET/PATH, gs://BUCKET/PATH "
                        "or another fsspec URL") from None
    except Exception as error:  # noqa: BLE001 - only store and network failures become a line, see below
        if not _is_store_failure(error):
            raise
        raise UserError(store_failure(url, error)) from None


def store_failure(url: str, error: Exception) -> str:
    """One line for a store's failure: no such bucket or object, access denied, or the store unreachable."""
    if isinstance(error, FileNotFoundError):
        return f"{url}: no such bucket or object ({first_line(error)}); check the URL"
    if isinstance(error, PermissionError) or "Credentials" in type(error).__name__:  # NoCredentialsError...
        return f"{url}: access denied ({first_line(error)}); {CREDENTIALS_ADVICE}"
    return f"{url}: cannot reach the store ({type(error).__name__}: {first_line(error)}); {ENDPOINT_ADVICE}"


def _is_store_failure(error: Exception) -> bool:
    module = type(error).__module__ or ""
    return isinstance(error, TimeoutError) or module.split(".")[0] in (
        "botocore", "aiobotocore", "aiohttp", "google", "s3fs", "gcsfs", "urllib3", "requests")


def list_objects(url: str) -> list[RemoteObject]:
    """Every object under `url` (or the one object `url` names), with its identity: one listing, no download.

    Raises:
        UserError: nothing is there (no bucket, no object under that prefix), or the store fails.
    """
    objects = find_objects(url)
    if not objects:
        raise UserError(f"{url}: no such object, nor any object under it; check the URL")
    return objects


def find_objects(url: str) -> list[RemoteObject]:
    """Every object under `url` (or the one object `url` names), sorted; none is an empty list, not an error.

    Raises:
        UserError: the store fails (no such bucket, denied, unreachable).
    """
    fs, root = filesystem(url)
    with store_errors(url):
        entries = fs.find(root, detail=True)
    return sorted(RemoteObject(_relative(path, root), int(info.get("size") or 0), _identity(info))
                  for path, info in entries.items() if info.get("type", "file") == "file")


def _relative(path: str, root: str) -> str:
    root = root.rstrip("/")
    return path[len(root) + 1:] if path.startswith(root + "/") else Path(path).name


def _identity(info: dict[str, Any]) -> str:
    """The object's ETag, generation or the like; for a store that gives none of them, everything its listing
    says of the object (a modification time under another name, say), so that a change it reports shows."""
    for field in IDENTITY_FIELDS:
        if info.get(field) not in (None, ""):
            return f"{field}={info[field]}"
    return "info=" + hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:32]


def identities_digest(objects: Sequence[RemoteObject]) -> str:
    """sha256 of the objects' names, sizes and identities: what a local copy of them is keyed by."""
    text = "\n".join(f"{item.name}\t{item.size}\t{item.identity}" for item in objects)
    return hashlib.sha256(text.encode()).hexdigest()


def open_binary(url: str) -> BinaryIO:
    """`url` opened for reading (seekable; read in blocks as it is used)."""
    fs, path = filesystem(url)
    with store_errors(url):
        return fs.open(path, "rb")


def read_many(urls: Sequence[str]) -> dict[str, bytes | Exception]:
    """The bytes of each URL (all on one store), fetched concurrently; an object that is gone maps to its
    FileNotFoundError. Any other failure (unreachable, denied) is the store's, not the object's: it raises
    as `store_errors` says, so a short outage never passes for a folder of unreadable images."""
    if not urls:
        return {}
    fs, _ = filesystem(urls[0])
    paths = [fs._strip_protocol(url) for url in urls]
    with store_errors(urls[0]):
        contents = fs.cat(paths, on_error="return")
        failed = [value for value in contents.values() if isinstance(value, Exception)
                  and not isinstance(value, FileNotFoundError)]
        if failed:  # unreachable, denied, throttled: the store's failure, not the object's
            raise failed[0]
    return {url: contents.get(path, FileNotFoundError(url)) for url, path in zip(urls, paths)}


def cache_root() -> Path:
    """Where models fetched from buckets are kept: `$KERAS_PIPELINE_CACHE`, else `~/.cache/keras-pipeline`."""
    configured = os.environ.get("KERAS_PIPELINE_CACHE")
    if configured:  # absolute: links into the cache are made with it, and a relative one would dangle
        return Path(configured).expanduser().resolve()
    return (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "keras-pipeline").resolve()


def fetch_tree(url: str, objects: Sequence[RemoteObject] | None = None, cache_dir: Path | None = None) -> Path:
    """A local copy of every object under `url`, kept in the cache by their identities.

    The copy is downloaded into a hidden folder and renamed into place: a killed download leaves no
    copy that a later call could take for whole; objects changed since are fetched anew under another key.

    Args:
        url: a folder in a bucket (a model's version, say).
        objects: its listing, if the caller made one already.
        cache_dir: the cache's folder; `cache_root()/objects` by default.

    Returns:
        The local folder, laid out as the objects under `url`.
    """
    objects = list(objects) if objects is not None else list_objects(url)
    cache_dir = cache_dir or cache_root() / "objects"
    local_dir = cache_dir / identities_digest(objects)[:32]
    if local_dir.is_dir():
        return local_dir
    with store_errors(url):  # a cache folder that cannot be made is said in one line, naming it
        cache_dir.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(cache_dir)
        partial_dir = Path(tempfile.mkdtemp(prefix=FETCHING_PREFIX, dir=cache_dir))
    try:
        fs, root = filesystem(url)
        with store_errors(url):
            fs.get([f"{root.rstrip('/')}/{item.name}" for item in objects],
                   [str(partial_dir / item.name) for item in objects])
        check_fetched(url, objects, partial_dir)
        partial_dir.chmod(0o755)  # mkdtemp's 0700 would keep a cache shared by several users to its first
        try:
            os.rename(partial_dir, local_dir)
        except OSError:  # another process fetched the same objects first: theirs is as good
            shutil.rmtree(partial_dir, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial_dir, ignore_errors=True)
        raise
    log.info("fetched %d objects (%.1f MB) of %s into %s", len(objects), sum(o.size for o in objects) / 1e6, url,
             local_dir)
    return local_dir


def check_fetched(url: str, objects: Sequence[RemoteObject], local_dir: Path) -> None:
    """Each file has its object's size and, where the ETag is a single upload's MD5, its content: an object
    rewritten between the listing and the download would otherwise be kept under the old listing's key.

    Raises:
        UserError: an object changed while it was downloaded.
    """
    for item in objects:
        path = local_dir / item.name
        etag = item.identity.removeprefix("ETag=").strip('"')
        changed = path.stat().st_size != item.size or (
            item.identity.startswith("ETag=") and re.fullmatch(r"[0-9a-f]{32}", etag) is not None
            and hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest() != etag)
        if changed:
            raise UserError(f"{join(url, item.name)}: changed while it was downloaded; run the command again")


def _remove_abandoned(cache_dir: Path, min_age_seconds: float = 3600) -> None:
    """Delete the partial downloads of processes killed mid-fetch (an hour old: none still running)."""
    for path in cache_dir.glob(f"{FETCHING_PREFIX}*"):
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime > min_age_seconds:
                shutil.rmtree(path, ignore_errors=True)


def put_tree(local_dir: Path, url: str) -> list[str]:
    """Copy every file under `local_dir` to `url/<relative path>`, concurrently.

    Returns:
        The relative paths copied, sorted.
    """
    names = sorted(path.relative_to(local_dir).as_posix() for path in local_dir.rglob("*") if path.is_file())
    fs, root = filesystem(url)
    with store_errors(url):
        fs.put([str(local_dir / name) for name in names], [f"{root.rstrip('/')}/{name}" for name in names])
    return names


def copy_objects(source_url: str, target_url: str, names: Sequence[str]) -> None:
    """Copy `source_url/<name>` to `target_url/<name>` inside the store (no download), concurrently."""
    if not names:
        return
    fs, source = filesystem(source_url)
    target = filesystem(target_url)[1]
    with store_errors(target_url):
        fs.copy([f"{source.rstrip('/')}/{name}" for name in names], [f"{target.rstrip('/')}/{name}" for name in names])


def read_bytes(url: str) -> bytes:
    """The whole content of the object `url` (a small one: it is read into memory)."""
    fs, path = filesystem(url)
    with store_errors(url):
        return fs.cat_file(path)


def delete_objects(url: str, names: Sequence[str]) -> None:
    """Delete `url/<name>` for every name, together; a name with no object is no error."""
    if not names:
        return
    fs, root = filesystem(url)
    with store_errors(url):
        fs.rm([f"{root.rstrip('/')}/{name}" for name in names])
