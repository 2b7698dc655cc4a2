"""Push: copy an exported version to a bucket, `<push_to>/<model_name>/<version>/`, in TF Serving's layout
(what TFX's Pusher does), so that servers and `predict` elsewhere read it from there.

A bucket has no rename, so a reader polling it must never find half a version: every file is uploaded
first under a staging prefix, `<model_name>/.staging-<version>-<token>/` (TF Serving ignores folders whose
name is no number), then copied inside the store to `<model_name>/<version>/` in three steps: every file
but two, then `saved_model.pb` (what TF Serving loads: it never finds a SavedModel without its
variables), then `metadata.json` (what this project's readers wait for, as `saved_models.version_dirs`
does locally). A push killed at any point leaves a version folder without `metadata.json`, or staging
objects; the next push of that version removes both.

It loads no TensorFlow.
"""

from __future__ import annotations

import json
import logging
import secrets
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


def push(config: ExportConfig, exported: ExportedModel, out_dir: Path) -> PushedModel:
    """Copy the exported version to `<push_to>/<model_name>/<version>/`, unless the bucket holds it already.

    Args:
        config: the export section; `push_to` is the bucket URL (the stage is skipped when it is "").
        exported: the version folder export published.
        out_dir: where `push.json` is written.

    Returns:
        Where the version is in the bucket, and whether this run copied it.

    Raises:
        UserError: the store fails (missing bucket, denied, unreachable), or another model holds that
            version number there.
    """
    model_url = remote.join(config.push_to, exported.version_dir.parent.name)
    outcome = push_version(exported.version_dir, model_url)
    version_url = remote.join(model_url, exported.version_dir.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    record_path = out_dir / RECORD_FILE
    files = sorted(path.relative_to(exported.version_dir).as_posix()
                   for path in exported.version_dir.rglob("*") if path.is_file())
    record_path.write_text(json.dumps({"version_url": version_url, "version": exported.version,
                                       "outcome": outcome, "files": files}, indent=2) + "\n")
    log.info("%s: %s", version_url, outcome)
    return PushedModel(record_path, version_url, outcome)


def push_version(version_dir: Path, model_url: str) -> str:
    """Copy one local version folder to `model_url/<version>/`, staged and in the order readers rely on.

    Args:
        version_dir: `saved_models/<model_name>/<version>`, with its `metadata.json`.
        model_url: the model's folder in the bucket, `<push_to>/<model_name>`.

    Returns:
        "pushed", or "already pushed" when the bucket's version holds the same `metadata.json`.
    """
    version = version_dir.name
    version_url = remote.join(model_url, version)
    present = [item.name for item in remote.find_objects(model_url)]
    leftovers = [name for name in present if name.startswith(f"{STAGING_PREFIX}{version}-")]
    remote.delete_objects(model_url, leftovers)  # staged by pushes of this version that were killed
    in_version = [name.partition("/")[2] for name in present if name.startswith(f"{version}/")]
    if METADATA_FILE in in_version:
        check_same_version(version_dir, version_url)
        return "already pushed"
    # A push killed while copying: take its SavedModel away before its variables, as it came after them.
    remote.delete_objects(version_url, [name for name in in_version if name == SERVING_FILE])
    remote.delete_objects(version_url, [name for name in in_version if name != SERVING_FILE])
    staging_url = remote.join(model_url, f"{STAGING_PREFIX}{version}-{secrets.token_hex(4)}")
    names = remote.put_tree(version_dir, staging_url)
    for group in publication_order(names):
        remote.copy_objects(staging_url, version_url, group)
    remote.delete_objects(staging_url, names)
    return "pushed"


def publication_order(names: Sequence[str]) -> list[list[str]]:
    """A version's files in the groups they are copied in, one group after another: every file but
    `saved_model.pb` and `metadata.json`, then `saved_model.pb`, then `metadata.json`."""
    last = (SERVING_FILE, METADATA_FILE)
    return [[name for name in names if name not in last]] + [[name] for name in last if name in names]


def check_same_version(version_dir: Path, version_url: str) -> None:
    """Refuse to take a bucket's version for this one unless its `metadata.json` holds the same bytes.

    Raises:
        UserError: another model holds that version number in the bucket.
    """
    if remote.read_bytes(remote.join(version_url, METADATA_FILE)) != (version_dir / METADATA_FILE).read_bytes():
        raise UserError(f"{version_url} holds another model than {version_dir} (their metadata.json differ), and a "
                        "published version is never replaced; set export.push_to to another URL or "
                        "export.model_name to another name, or remove that version from the bucket")
