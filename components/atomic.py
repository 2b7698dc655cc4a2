"""Writing so that readers never see half a file or half a folder, and cleaning up after the killed.

Files are written under a temporary name and renamed; folders are built under a hidden name that
carries the writer's process id, so a later process can tell an abandoned one from a live one.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, then rename the result to `path` in one step."""
    tmp_path = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    write(tmp_path)
    os.replace(tmp_path, path)


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda tmp_path: tmp_path.write_text(text))


def write_json_atomically(path: Path, data: Any) -> None:
    """`data` as indented JSON, renamed into place; values JSON does not know (paths) are written as text."""
    write_text_atomically(path, json.dumps(data, indent=2, default=str))


def new_hidden_dir(parent: Path, prefix: str) -> Path:
    """A fresh folder `parent/.<prefix>-<pid>-<random>` to build outputs in before renaming them."""
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".{prefix}-{os.getpid()}-", dir=parent))
    os.chmod(path, 0o777 & ~current_umask())  # mkdtemp makes it private; what it becomes is shared
    return path


def remove_abandoned(parent: Path, prefix: str) -> list[Path]:
    """Delete `.<prefix>-<pid>-*` folders under `parent` whose process no longer exists."""
    removed = []
    for path in parent.glob(f".{prefix}-*-*") if parent.is_dir() else []:
        pid = path.name.split("-")[1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_readable_by_all(folder: Path) -> None:
    """Give `folder` and everything in it the modes the umask allows (0755 folders, 0644 files under 022).

    Temporary folders are created private (0700); a version folder that stays so cannot be read by a
    server running as another user, as TF Serving does in its Docker image.
    """
    umask = current_umask()
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def current_umask() -> int:
    """The process's umask, read without changing it (setting it to read it races with other threads)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration):
        umask = os.umask(0o022)
        os.umask(umask)
        return umask


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold `folder`'s lock until the block ends; other holders wait. The folder need not exist.

    The lock file is a hidden sibling (`.<name>.lock`), so the folder itself holds only what it holds.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        yield
