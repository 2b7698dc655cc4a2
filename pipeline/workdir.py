"""The workdir a command is given: refused if it is a file, created once the command is known to be good."""

from __future__ import annotations

from pathlib import Path

from components.errors import UserError


def check_workdir(workdir: Path, named: str = "--workdir") -> None:
    """Refuse a workdir that is a file, before any work (`named`: how the message names the argument)."""
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"{named} {workdir} is a file; give a folder (it is created if missing)")


def create_workdir(workdir: Path, named: str = "--workdir") -> None:
    """Create the workdir if missing, once the command is known to be good."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{named} {workdir}: cannot create it ({error.strerror}); give a folder you can "
                        "write in") from None
