"""Content hashes: what the cache keys, artifact fingerprints and exports' identities are made of."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np


def json_sha256(data: Any) -> str:
    """sha256 of `data` as canonical JSON."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(*paths: Path) -> str:
    """sha256 over the bytes of each file, in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
        digest.update(b";")
    return digest.hexdigest()


def fingerprint_arrays(*arrays: np.ndarray | None) -> str:
    """sha256 over the dtype, shape and bytes of each array (None counts as absent)."""
    digest = hashlib.sha256()
    for array in arrays:
        if array is None:
            digest.update(b"none;")
            continue
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(array.data)
    return digest.hexdigest()
