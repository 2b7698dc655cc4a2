"""Exported models in a bucket, as local folders that predict, `load_model` and the server read as they read
`saved_models/`.

A bucket's `<model>/<N>/` folder is a version once its `metadata.json` exists, the rule of local folders
(`saved_models.version_dirs`): the pusher uploads `metadata.json` last, and S3's and GCS's listings are
strongly consistent, so a listing that shows it shows the whole version. A numbered folder without it (a push
under way, or killed) is not a version, and other names (`.staging-*`) are no versions at all.

A URL is listed once, with every object under it; each version used is fetched by `remote.fetch_tree`
into the cache (`<cache>/objects/<sha256 of its objects' names, sizes and identities>`), so an unchanged
version is never downloaded twice and a changed one is fetched anew. Its objects' folder has a hash for a
name, and `LoadedModel` reads a version's model and number from its path, so each is reached through a
link named `<model>/<N>`: for predict and `load_model` `<cache>/versions/<key>/<model>/<N>` (fixed once
made), for the server a mirror of the bucket's folder, `<cache>/mirrors/<sha256 of URL>/<model>/<N>`,
brought up to date at every poll (each link replaced by one rename; a version gone from the bucket loses
its link).

It loads no TensorFlow: predict and the server reach buckets through it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from components.errors import UserError
from components.remote import RemoteObject, cache_root, fetch_tree, is_url, join, list_objects
from components.saved_models import METADATA_FILE

# A version's metadata.json, by where it lies under the URL listed: the URL names a version folder, a
# model folder (`<N>/`) or a folder of model folders (`<model>/<N>/`). Hidden names are no model.
VERSION_METADATA = re.compile(rf"(?:(?P<model>[^/.][^/]*)/)?(?P<number>[0-9]+)/{re.escape(METADATA_FILE)}")
VERSION_KINDS = ("version", "model")  # what predict and load_model take; the server takes "models" too
HOW = "give s3://BUCKET/PATH/<model> (its newest version) or .../<model>/<version>"


@dataclass(frozen=True)
class RemoteVersion:
    """One complete version in a bucket: its model's name, its number, its folder's URL and its objects."""

    model: str
    number: int
    url: str
    objects: tuple[RemoteObject, ...]  # named relative to `url`


@dataclass(frozen=True)
class BucketListing:
    """What a URL holds: `version` (it is a version folder), `model` or `models`, and its complete versions."""

    kind: str
    versions: tuple[RemoteVersion, ...]  # by model, then oldest number first


def list_versions(url: str) -> BucketListing:
    """The complete versions under `url`, from one listing.

    Raises:
        UserError: nothing under `url`, the store fails, or no complete version is there.
    """
    url = url.rstrip("/")
    objects = list_objects(url)
    if any(item.name == METADATA_FILE for item in objects):
        return BucketListing("version", (_version_folder(url, objects),))
    found = [match for item in objects if (match := VERSION_METADATA.fullmatch(item.name))]
    kind = "model" if any(match["model"] is None for match in found) else "models"
    keys = sorted({(match["model"], int(match["number"])) for match in found
                   if (match["model"] is None) == (kind == "model")}, key=lambda key: (key[0] or "", key[1]))
    if not keys:
        raise UserError(f"{url}: no exported version under it (a version folder counts once its {METADATA_FILE}, "
                        f"uploaded last, is there); {HOW}")
    return BucketListing(kind, tuple(_version(url, model, number, objects) for model, number in keys))


def _version_folder(url: str, objects: Sequence[RemoteObject]) -> RemoteVersion:
    """The version `url` itself names: its folder's name is its number, as locally."""
    parent, _, number = url.rpartition("/")
    if not (number.isascii() and number.isdigit()):
        raise UserError(f"{url}: holds {METADATA_FILE} but is not named by a version number; copy it to "
                        "<model>/<N>/, as export and push lay versions out")
    return RemoteVersion(parent.rpartition("/")[2], int(number), url, tuple(objects))


def _version(url: str, model: str | None, number: int, objects: Sequence[RemoteObject]) -> RemoteVersion:
    """Version `number` of `model` (None: of the model folder `url`), its objects named relative to its folder."""
    prefix = f"{model}/{number}/" if model else f"{number}/"
    return RemoteVersion(model or url.rpartition("/")[2], number, join(url, prefix),
                         tuple(RemoteObject(item.name[len(prefix):], item.size, item.identity)
                               for item in objects if item.name.startswith(prefix)))


def newest_versions(versions: Sequence[RemoteVersion], num_versions: int) -> list[RemoteVersion]:
    """The newest `num_versions` versions of each model (every version when 0)."""
    kept: list[RemoteVersion] = []
    for model in sorted({version.model for version in versions}):
        numbered = sorted((version for version in versions if version.model == model), key=lambda v: v.number)
        kept += numbered[-num_versions:] if num_versions else numbered
    return kept


def local_model(location: str | Path) -> Path:
    """The local folder of a model or version: `location` itself, or a bucket's newest version there, fetched.

    Raises:
        UserError: a URL that holds no exported model or version, or a store that fails.
    """
    if not is_url(location):
        return Path(location)
    url = str(location)
    listing = list_versions(url)
    if listing.kind == "models":
        raise UserError(f"{url}: a folder of model folders; {HOW}")
    return version_view(listing.versions[-1])


def version_view(version: RemoteVersion) -> Path:
    """`<cache>/versions/<key>/<model>/<N>`: the version fetched, under the model's name and number that
    `LoadedModel` reads from its path. Keyed by its objects, so the link never changes once made."""
    target = fetch_tree(version.url, version.objects)
    view = cache_root() / "versions" / target.name / version.model / str(version.number)
    _link(view, target)
    return view


def mirror_models(url: str, num_versions: int) -> Path:
    """A local folder laid out as `saved_models/` that stands for a bucket's folder of model folders (or one
    model folder), its newest versions fetched and linked in; the server calls it again at every poll.

    Args:
        url: a folder of model folders (`s3://BUCKET/models`), or one model folder.
        num_versions: how many of each model's newest complete versions to fetch (0: every one).

    Returns:
        `<cache>/mirrors/<sha256 of the URL and num_versions>`, holding `<model>/<N>` links to the cache.

    Raises:
        UserError: `url` is a version folder, holds no complete version, or the store fails.
    """
    listing = list_versions(url)
    if listing.kind == "version":
        raise UserError(f"{url}: one version; give the folder of model folders (s3://BUCKET/models), or one "
                        "model folder, whose newest versions are served")
    key = f"{url.rstrip('/')}\n{num_versions}"
    mirror_dir = cache_root() / "mirrors" / hashlib.sha256(key.encode()).hexdigest()[:16]
    link_versions(mirror_dir, {(version.model, version.number): fetch_tree(version.url, version.objects)
                               for version in newest_versions(listing.versions, num_versions)},
                  keep={(version.model, version.number) for version in listing.versions})
    return mirror_dir


def link_versions(mirror_dir: Path, targets: dict[tuple[str, int], Path],
                  keep: set[tuple[str, int]] = frozenset()) -> None:
    """Make `mirror_dir/<model>/<N>` link to each target, and remove every other version and model there
    but those in `keep`.

    Links are replaced before anything is removed, so a reader finds every version kept at any moment.
    An older version linked before and still in the bucket (`keep`) stays: if the newest fails to load,
    the server goes back to it, as it does in a local folder, instead of dropping the model.
    """
    mirror_dir.mkdir(parents=True, exist_ok=True)
    for (model, number), target in targets.items():
        _link(mirror_dir / model / str(number), target)
    wanted = set(targets) | set(keep)
    models = {model for model, _ in wanted}
    for model_dir in mirror_dir.iterdir():
        if model_dir.name not in models:
            _remove(model_dir)
            continue
        for entry in model_dir.iterdir():
            if (model_dir.name, _number(entry.name)) not in wanted:
                _remove(entry)


def _number(name: str) -> int:
    return int(name) if name.isascii() and name.isdigit() else -1


def _link(link: Path, target: Path) -> None:
    """Point `link` at `target`, by a link made beside it and renamed over it: a reader sees the old or the new."""
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    temporary = link.parent / f".link-{link.name}-{uuid.uuid4().hex}"
    temporary.symlink_to(target, target_is_directory=True)
    os.replace(temporary, link)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)
