"""Push: copy an exported version to a bucket, `<push_to>/<model_name>/<number>/`, in TF Serving's layout
(what TFX's Pusher does), so that servers and `predict` elsewhere read it from there.

The number is the bucket's, not the workdir's: readers serve the newest number in the bucket, which other
workdirs (other machines, every fresh CI run) push to as well. A version goes in as the local number or,
if the bucket holds that number or a higher one already, as the bucket's newest complete number + 1; an
export the bucket holds already (the same `metadata.json` bytes, under any number) is not copied again.

A bucket has no rename, so a reader polling it must never find half a version: every file is uploaded
first under a staging prefix, `<model_name>/.staging-<number>-<token>/` (TF Serving ignores folders whose
name is no number), then copied inside the store to `<model_name>/<number>/` in three steps: every file
but two, then `saved_model.pb` (what TF Serving loads: it never finds a SavedModel without its
variables), then `metadata.json` (what this project's readers wait for, as `saved_models.version_dirs`
does locally). A push killed at any point leaves a version folder without `metadata.json`, or staging
objects; the next push to that number removes both.

Nothing in a bucket locks a number: two pushes of one model at once can choose the same one. Each checks
the version folder once its copy is done, and fails if it holds anything but its own files; this detects
such a race, it does not prevent it.

It loads no TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from components import remote
from components.artifacts import ExportedModel, PushedModel
from components.config import ExportConfig
from components.errors import UserError
from components.saved_models import METADATA_FILE

log = logging.getLogger(__name__)

SERVING_FILE = "saved_model.pb"  # what TF Serving loads from a version folder: it must come after its variables
STAGING_PREFIX = ".staging-"  # not a number: TF Serving and `version_dirs` pass over such a folder
RECORD_FILE = "push.json"


@dataclass(frozen=True)
class Publication:
    """Where one push left a version in the bucket."""

    number: int  # the version's number in the bucket (the local one, unless the bucket's are higher)
    outcome: str  # pushed | already pushed (the bucket held this very export: nothing was copied)


def push(config: ExportConfig, exported: ExportedModel, out_dir: Path) -> PushedModel:
    """Copy the exported version to `<push_to>/<model_name>/<number>/`, unless the bucket holds it already.

    Args:
        config: the export section; `push_to` is the bucket URL (the stage is skipped when it is "").
        exported: the version folder export published.
        out_dir: where `push.json` is written.

    Returns:
        Where the version is in the bucket, and whether this run copied it. A later run reuses it only while
        the bucket still holds that copy whole (`PushedModel.still_holds`).

    Raises:
        UserError: the store fails (missing bucket, denied, unreachable), or another push of the same model
            raced this one to the same number.
    """
    model_url = remote.join(config.push_to, exported.version_dir.parent.name)
    publication = push_version(exported.version_dir, model_url)
    version_url = remote.join(model_url, str(publication.number))
    out_dir.mkdir(parents=True, exist_ok=True)
    record_path = out_dir / RECORD_FILE
    record_path.write_text(json.dumps({
        "version_url": version_url, "version": publication.number, "local_version": exported.version,
        "outcome": publication.outcome, "files": local_sizes(exported.version_dir),
        "metadata_sha256": hashlib.sha256((exported.version_dir / METADATA_FILE).read_bytes()).hexdigest()},
        indent=2) + "\n")
    log.info("%s: %s%s", version_url, publication.outcome,
             "" if publication.number == exported.version else f" (local version {exported.version})")
    return PushedModel(record_path, version_url, publication.outcome, exported.version)


def push_version(version_dir: Path, model_url: str) -> Publication:
    """Copy one local version folder to `model_url/<number>/`, staged and in the order readers rely on.

    Args:
        version_dir: `saved_models/<model_name>/<version>`, with its `metadata.json`.
        model_url: the model's folder in the bucket, `<push_to>/<model_name>`.

    Returns:
        The number chosen and "pushed", or the number of the bucket's version that holds the same
        `metadata.json` and "already pushed".

    Raises:
        UserError: the store fails, or another push raced this one (`check_published`).
    """
    present = remote.find_objects(model_url)
    complete = complete_versions(present)
    number = find_same_version(version_dir, model_url, complete)
    if number is not None:
        check_published(version_dir, remote.join(model_url, str(number)), already=True)
        delete_leftovers(model_url, present, number)
        return Publication(number, "already pushed")
    number = next_number(int(version_dir.name), present, complete)
    delete_leftovers(model_url, present, number)
    version_url = remote.join(model_url, str(number))
    staging_url = remote.join(model_url, f"{STAGING_PREFIX}{number}-{secrets.token_hex(4)}")
    names = remote.put_tree(version_dir, staging_url)
    for group in publication_order(names):
        remote.copy_objects(staging_url, version_url, group)
    remote.delete_objects(staging_url, names)
    check_published(version_dir, version_url)
    return Publication(number, "pushed")


def next_number(local: int, present: Sequence[remote.RemoteObject], complete: dict[int, remote.RemoteObject]) -> int:
    """The number a new version gets: the local one, unless the bucket's numbered folders reach it; then the
    newest one's, when it is unfinished (a killed push, deleted first), else the one after it.

    Above every numbered folder, not only the complete ones: a killed push's folder holds a whole SavedModel
    once `saved_model.pb` is copied, which TF Serving serves as the newest.
    """
    numbers = {int(folder) for folder in (item.name.partition("/")[0] for item in present)
               if folder.isascii() and folder.isdigit()}
    if not numbers or max(numbers) < local:
        return local
    return max(numbers) if max(numbers) not in complete else max(numbers) + 1


def complete_versions(objects: Sequence[remote.RemoteObject]) -> dict[int, remote.RemoteObject]:
    """The `metadata.json` object of every complete version among a model folder's objects, by number."""
    found = {}
    for item in objects:
        folder, _, rest = item.name.partition("/")
        if rest == METADATA_FILE and folder.isascii() and folder.isdigit():  # "²".isdigit() is True
            found[int(folder)] = item
    return found


def find_same_version(version_dir: Path, model_url: str, complete: dict[int, remote.RemoteObject]) -> int | None:
    """The newest number whose `metadata.json` holds the local bytes; only those of the same size are read."""
    local = (version_dir / METADATA_FILE).read_bytes()
    urls = {remote.join(model_url, item.name): number for number, item in complete.items() if item.size == len(local)}
    contents = remote.read_many(sorted(urls))
    return max((urls[url] for url, content in contents.items() if content == local), default=None)


def delete_leftovers(model_url: str, present: Sequence[remote.RemoteObject], number: int) -> None:
    """Delete what killed pushes to `number` left: their staging objects and, unless it is complete, the
    version folder (`saved_model.pb` first, as it came after its variables)."""
    names = [item.name for item in present]
    remote.delete_objects(model_url, [name for name in names if name.startswith(f"{STAGING_PREFIX}{number}-")])
    in_version = [name.partition("/")[2] for name in names if name.startswith(f"{number}/")]
    if METADATA_FILE in in_version:
        return
    version_url = remote.join(model_url, str(number))
    remote.delete_objects(version_url, [name for name in in_version if name == SERVING_FILE])
    remote.delete_objects(version_url, [name for name in in_version if name != SERVING_FILE])


def publication_order(names: Sequence[str]) -> list[list[str]]:
    """A version's files in the groups they are copied in, one group after another: every file but
    `saved_model.pb` and `metadata.json`, then `saved_model.pb`, then `metadata.json`."""
    last = (SERVING_FILE, METADATA_FILE)
    return [[name for name in names if name not in last]] + [[name] for name in last if name in names]


def check_published(version_dir: Path, version_url: str, already: bool = False) -> None:
    """Check that the version folder holds the local files, by name and size, and the local `metadata.json`.

    Args:
        already: the folder was found holding this export's `metadata.json` before any copy (not just copied).

    Raises:
        UserError: it holds other objects: another push of the same model chose the same number, or (with
            `already`) some of its objects were deleted or replaced since it was pushed.
    """
    local = local_sizes(version_dir)
    published = {item.name: item.size for item in remote.find_objects(version_url)}
    if published == local and remote.read_bytes(remote.join(version_url, METADATA_FILE)) == \
            (version_dir / METADATA_FILE).read_bytes():
        return
    differing = sorted(name for name in local.keys() | published.keys() if local.get(name) != published.get(name))
    what = ", ".join(differing) or METADATA_FILE
    if already:
        raise UserError(f"{version_url} holds this export's {METADATA_FILE} but not all its files ({what} differ: "
                        "deleted or replaced since it was pushed); delete that version folder and run again")
    raise UserError(f"{version_url}: another push of the same model raced this one to that number, and the "
                    f"version folder holds objects that are not {version_dir}'s ({what} differ); inspect "
                    f"{version_url} and delete it if it is mixed, then run again (it pushes to the next free number)")


def local_sizes(version_dir: Path) -> dict[str, int]:
    """Every file of a version folder, by relative path, with its size in bytes."""
    return {path.relative_to(version_dir).as_posix(): path.stat().st_size
            for path in sorted(version_dir.rglob("*")) if path.is_file()}
