"""What a reproduction of a run needs besides its config: seeds, packages, code version, devices."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

from components.devices import local_devices
from pipeline.config import PipelineConfig
from pipeline.fingerprint import environment

REPO_DIR = Path(__file__).resolve().parents[1]


def reproduction_record(config: PipelineConfig) -> dict[str, Any]:
    """Seeds, package versions, git commit (with a dirty flag), Python, platform and devices."""
    return {
        "seeds": {"data.seed": config.data.seed, "train.seed": config.train.seed},
        "deterministic": config.train.deterministic,
        "packages": environment(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": git_state(REPO_DIR),
        "devices": [{"kind": d.kind, "compute_capability": d.compute_capability} for d in local_devices()],
    }


def git_state(repo_dir: Path) -> dict[str, Any] | None:
    """The checked-out commit and whether the work tree differs from it; None outside a git checkout."""
    try:
        commit = _git(repo_dir, "rev-parse", "HEAD")
        dirty = bool(_git(repo_dir, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit, "dirty": dirty}


def _git(repo_dir: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo_dir), *args], capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()
