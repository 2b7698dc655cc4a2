"""The models a server serves: every model folder under `saved_models/`, kept current by polling the folder.

Like TF Serving's file-system poller: a version exported while the server runs is loaded, fully, and only
then served; a removed version is dropped. Each poll builds a new mapping and swaps it in with one
assignment, so a request sees the models before the poll or after it, never a mix. Readers take no lock.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from components.errors import UserError
from components.loaded_model import LoadedModel, load_exported
from components.saved_models import version_dirs
from pipeline.serving.errors import NotFound

logger = logging.getLogger(__name__)

Loader = Callable[[Path, str], LoadedModel]  # (version_dir, backend) -> the loaded version


@dataclass(frozen=True)
class ServedModel:
    """The loaded versions of one model, by version number."""

    name: str
    versions: Mapping[int, LoadedModel]

    @property
    def newest(self) -> LoadedModel:
        """The version a request without a version number gets."""
        return self.versions[max(self.versions)]

    def version(self, number: int | None) -> LoadedModel:
        """Version `number`, or the newest one when None.

        Raises:
            NotFound: that version is not being served.
        """
        if number is None:
            return self.newest
        if number not in self.versions:
            raise NotFound(f"model {self.name!r} has no version {number} being served; it serves "
                           f"{', '.join(map(str, sorted(self.versions)))}")
        return self.versions[number]


class ModelRepository:
    """The served models of one `saved_models/` folder: the newest `num_versions` loadable versions of each.

    A version that fails to load (a broken export) is logged, skipped in favour of the next older one,
    and retried only once its files change.
    """

    def __init__(self, saved_models_dir: Path, backend: str, num_versions: int = 1,
                 load: Loader | None = None, sync: Callable[[], object] | None = None):
        """
        Args:
            saved_models_dir: holds `<model>/<version>/` folders (TF Serving's layout).
            backend: which file each version is served from (`components.model_files`); a version without
                it is not served, and a request for its model is told why when no version of it is.
            num_versions: how many of each model's newest versions to keep loaded; 0 keeps every version.
            load: loads one version folder; `components.loaded_model.load_exported` by default.
            sync: brings `saved_models_dir` up to date before each look (a bucket's mirror:
                `components.bucket_models.mirror_models`); a `UserError` from it leaves the folder as it was.
        """
        self.saved_models_dir, self.backend, self.num_versions = saved_models_dir, backend, num_versions
        self._load = load or load_exported
        self._sync = sync
        self._sync_error: str | None = None  # why the last sync failed, said once until it changes
        self._models: Mapping[str, ServedModel] = {}
        self._failed: dict[Path, tuple] = {}  # version folder -> its files' stamp when it failed to load
        self._errors: dict[Path, str] = {}  # version folder -> why it failed to load
        self._real_dirs: dict[Path, Path] = {}  # version folder -> where it led when it was loaded
        self.ready = threading.Event()  # set once the first poll has loaded what was there at start

    @property
    def models(self) -> Mapping[str, ServedModel]:
        """Every served model by name (a snapshot: it does not change under the caller)."""
        return self._models

    def model(self, name: str) -> ServedModel:
        """The served model `name`.

        Raises:
            NotFound: no model of that name is being served.
        """
        models = self._models
        if name in models:
            return models[name]
        failed = [path for path in self._errors if path.parent.name == name]
        if failed:
            newest = max(failed, key=lambda path: int(path.name))
            raise NotFound(f"model {name!r} is not being served: {self._errors[newest]}")
        raise NotFound(f"no model {name!r}; this server serves {', '.join(sorted(models)) or 'no model yet'}")

    def refresh(self) -> None:
        """Look at the folder once: load new versions, then switch to them and drop removed ones."""
        self._sync_folder()
        before = self._models
        after = {}
        for model_dir in _model_dirs(self.saved_models_dir):
            try:
                versions = self._newest_loadable(model_dir, before.get(model_dir.name))
            except Exception as error:  # noqa: BLE001 - one odd model folder must not stop the others
                logger.warning("skipping %s this poll (still serving what it served): %s: %s", model_dir,
                               type(error).__name__, error)
                versions = dict(before[model_dir.name].versions) if model_dir.name in before else {}
            if versions:
                after[model_dir.name] = ServedModel(model_dir.name, versions)
        self._models = after
        self._failed = {path: stamp for path, stamp in self._failed.items() if path.exists()}
        self._errors = {path: why for path, why in self._errors.items() if path in self._failed}
        self._real_dirs = {path: real for path, real in self._real_dirs.items() if path.exists()}
        _log_changes(before, after)
        self.ready.set()

    def poll(self, stop: threading.Event, interval_seconds: float) -> None:
        """Refresh every `interval_seconds` until `stop` is set; a failing refresh is logged and retried."""
        while not stop.is_set():
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - the poller must outlive a folder that vanishes mid-scan
                logger.exception("polling %s failed; retrying", self.saved_models_dir)
            stop.wait(interval_seconds)

    def _sync_folder(self) -> None:
        """Bring the folder up to date, if it mirrors a bucket. A store that fails (unreachable, say) is
        logged, once until its error changes, and the folder is left as it was: what is served stays served."""
        if self._sync is None:
            return
        try:
            self._sync()
        except UserError as error:
            if str(error) != self._sync_error:
                logger.warning("cannot update %s (still serving what it served; retried every poll): %s",
                               self.saved_models_dir, error)
            self._sync_error = str(error)
            return
        if self._sync_error is not None:
            logger.info("updating %s works again", self.saved_models_dir)
            self._sync_error = None

    def _newest_loadable(self, model_dir: Path, served: ServedModel | None) -> dict[int, LoadedModel]:
        """The newest `num_versions` versions of `model_dir` that load, reusing those already served."""
        loaded: dict[int, LoadedModel] = {}
        for version_dir in reversed(version_dirs(model_dir)):
            if self.num_versions and len(loaded) == self.num_versions:
                break
            number = int(version_dir.name)
            model = served.versions.get(number) if served else None
            if model is not None and self._real_dirs.get(version_dir) != version_dir.resolve():
                model = None  # the folder now holds other files (a bucket mirror's link moved): load them
            if model is None:
                model = self._try_load(version_dir)
            if model is not None:
                loaded[number] = model
        return dict(sorted(loaded.items()))

    def _try_load(self, version_dir: Path) -> LoadedModel | None:
        """The loaded version, or None (logged) when it fails to load now or failed before unchanged."""
        stamp = _files_stamp(version_dir)
        if stamp is None or self._failed.get(version_dir) == stamp:
            return None
        real_dir = version_dir.resolve()  # before loading: a link moved meanwhile is seen at the next poll
        try:
            model = self._load(version_dir, self.backend)
        except Exception as error:  # noqa: BLE001 - one broken export must not stop the others being served
            self._failed[version_dir] = stamp
            self._errors[version_dir] = str(error)
            logger.warning("not serving %s: %s: %s (retried when its files change)", version_dir,
                           type(error).__name__, error)
            return None
        self._real_dirs[version_dir] = real_dir
        logger.info("loaded %s/%s (%s backend)", model.name, model.version, self.backend)
        return model


def _model_dirs(saved_models_dir: Path) -> list[Path]:
    """The model folders under `saved_models_dir` (hidden ones, such as an export's staging folder, skipped)."""
    try:
        return sorted(path for path in saved_models_dir.iterdir() if path.is_dir() and not path.name.startswith("."))
    except FileNotFoundError:
        return []


def _files_stamp(version_dir: Path) -> tuple | None:
    """Relative path, size and modification time of every entry under `version_dir`; None once it is gone.

    Recursive, because a SavedModel's `variables/variables.data-*` may finish writing after the folder's
    own entries. A file added, removed, rewritten or resized changes it (modification times alone can tie:
    the file system's clock ticks in milliseconds).
    """
    if not version_dir.is_dir():  # rglob of a missing folder yields nothing; that is no export
        return None
    try:
        return tuple(sorted((path.relative_to(version_dir).as_posix(), (stat := path.stat()).st_size,
                             stat.st_mtime_ns) for path in version_dir.rglob("*")))
    except (FileNotFoundError, NotADirectoryError):
        return None


def _log_changes(before: Mapping[str, ServedModel], after: Mapping[str, ServedModel]) -> None:
    """One line per model whose served versions changed."""
    for name in sorted(set(before) | set(after)):
        old = sorted(before[name].versions) if name in before else []
        new = sorted(after[name].versions) if name in after else []
        if old != new:
            logger.info("serving %s versions %s (was %s)", name, new or "none", old or "none")
