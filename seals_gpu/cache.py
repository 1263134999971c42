"""What a run builds for a store and a later run can reuse: the search index over the train rows and the
train rows' neighbour lists, kept under a cache folder and keyed by everything they depend on.

Folder: ``$SEALS_GPU_CACHE`` if set (``off`` disables caching), else ``$XDG_CACHE_HOME/seals_gpu`` or
``~/.cache/seals_gpu``. Each entry is one ``.npz`` named by a hash of its key (the store's fingerprint, a
hash of its test ids, the index layout and the search settings) and written atomically; an entry that is
unreadable or does not match its key is ignored (and rebuilt), never trusted. Deleting the folder is always
safe. ``run`` logs every hit and every write.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path

ENV = "SEALS_GPU_CACHE"


def cache_root() -> Path | None:
    """The cache folder, or None when caching is off (``SEALS_GPU_CACHE=off``)."""
    env = os.environ.get(ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "seals_gpu"


def ids_digest(ids: np.ndarray) -> str:
    """A short hash of an int64 id array (e.g. the test split), part of a cache key."""
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def _path(kind: str, key: dict[str, Any]) -> Path | None:
    root = cache_root()
    if root is None:
        return None
    h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return root / f"{kind}-{h}.npz"


def load(kind: str, key: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The arrays cached under ``(kind, key)``, or None (absent, unreadable, or written for another key)."""
    path = _path(kind, key)
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if json.loads(arrays.pop("_key").tobytes().decode()) != json.loads(json.dumps(key, default=str)):
            return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    return arrays


def save(kind: str, key: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path | None:
    """Store ``arrays`` under ``(kind, key)`` atomically; returns the file, or None when caching is off or
    the folder cannot be written (a cache is an optimisation: failing to write one is not an error)."""
    path = _path(kind, key)
    if path is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = dict(arrays)
        payload["_key"] = np.frombuffer(json.dumps(key, sort_keys=True, default=str).encode(), np.uint8)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **payload)
    except OSError:
        return None
    return path
