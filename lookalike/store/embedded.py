"""Opening the embedded store: one process per folder, and never the other engine's folder."""

from __future__ import annotations

import fcntl
from pathlib import Path

from lookalike.errors import StoreError, StoreLocked
from lookalike.lockfile import LOCK_FILE, StoreLockBusy, describe_holder, register_lock_path
from lookalike.store.base import VectorStore

#: A file or folder that only one engine writes at the top of QDRANT_PATH.
ENGINE_MARKERS = {"qdrant-client": "meta.json", "edge": "collections"}


def open_embedded(path: Path, engine: str = "edge", collection: str = "products") -> VectorStore:
    """Open the embedded store, failing fast when another process holds the folder or when it
    was written by the other engine (its data would look like an empty store)."""
    path.mkdir(parents=True, exist_ok=True)
    for other, marker in ENGINE_MARKERS.items():
        if other != engine and (path / marker).exists():
            raise StoreError(
                f"the embedded store at {path} was written by EMBEDDED_ENGINE={other}, not {engine}: set "
                f"EMBEDDED_ENGINE={other}, or point QDRANT_PATH at a new folder and run `python -m ingest`"
            )
    register_lock_path(path / LOCK_FILE)  # forked children (decode workers) never keep it
    if engine == "edge":
        from lookalike.store.edge import EdgeFolder, EdgeStore

        try:
            return EdgeStore(EdgeFolder(path), collection)
        except StoreLockBusy as e:
            raise _store_locked(path, e.holder) from e
    from lookalike.store.qdrant import QdrantStore

    try:
        return QdrantStore.local(path, collection)
    except RuntimeError:  # local mode's lock, on the same file
        if not _locked(path / LOCK_FILE):
            raise
        raise _store_locked(path, describe_holder(path / LOCK_FILE)) from None


def _locked(lock_file: Path) -> bool:
    """Whether another open file holds the ``flock`` on ``lock_file`` now."""
    with lock_file.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def _store_locked(path: Path, holder: str) -> StoreLocked:
    return StoreLocked(
        f"the embedded Qdrant store at {path} is in use by another process ({holder}); embedded mode "
        "allows one process per directory (the API service or an ingest run). Stop that process first, add "
        "items through the running API (PUT /v1/items/<id>), or run a Qdrant server and set QDRANT_URL"
    )
