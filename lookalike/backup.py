"""Backups of what cannot be rebuilt from the catalogue: the store, and the items added over the API.

Embedded store: a consistent copy of ``QDRANT_PATH`` taken while this process holds the store's
lock (no other process can write meanwhile) after the engine flushed, plus ``UPLOAD_DIR`` (the
uploaded images and the upload journal). Restore puts such a copy back, again under the lock.
A Qdrant server takes its own snapshot (Qdrant's snapshot API); the upload folder is copied.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from lookalike.errors import CatalogueError, StoreError
from lookalike.lockfile import LOCK_FILE
from lookalike.settings import Settings
from lookalike.store import VectorStore
from lookalike.store.qdrant import QdrantStore

log = logging.getLogger(__name__)
STORE_FOLDER, UPLOADS_FOLDER = "qdrant", "uploads"


def backup(settings: Settings, destination: Path) -> Path:
    """Write a backup into a new folder under ``destination``; returns that folder."""
    target = Path(destination) / time.strftime("lookalike-backup-%Y%m%d-%H%M%S")
    target.mkdir(parents=True)
    store = VectorStore.from_settings(settings)  # holds the lock until closed (embedded)
    try:
        if isinstance(store, QdrantStore) and not store.embedded:
            (target / "server-snapshot.txt").write_text(f"{store.physical_name()} {store.snapshot()}\n")
        else:
            store.flush()
            shutil.copytree(settings.qdrant_path, target / STORE_FOLDER, ignore=shutil.ignore_patterns(LOCK_FILE))
    finally:
        store.close()
    if settings.upload_dir.is_dir():
        shutil.copytree(settings.upload_dir, target / UPLOADS_FOLDER)
    log.info("backup written", extra={"path": str(target)})
    return target


def restore(settings: Settings, source: Path) -> Path:
    """Put an embedded backup back in place; the current folders are kept beside, renamed."""
    if not settings.embedded:
        raise StoreError("restore a Qdrant server from its snapshot with Qdrant's own API (README: Backup and restore)")
    store_copy = Path(source) / STORE_FOLDER
    if not store_copy.is_dir():
        raise CatalogueError(f"{source} is not a backup written by `python -m ingest --backup` (no {STORE_FOLDER}/)")
    suffix = time.strftime(".before-restore-%Y%m%d-%H%M%S")
    store = VectorStore.from_settings(settings)  # fails while the API or an ingest holds the store
    try:
        settings.qdrant_path.rename(settings.qdrant_path.with_name(settings.qdrant_path.name + suffix))
        shutil.copytree(store_copy, settings.qdrant_path)
    finally:
        store.close()
    uploads_copy = Path(source) / UPLOADS_FOLDER
    if uploads_copy.is_dir():
        if settings.upload_dir.exists():
            settings.upload_dir.rename(settings.upload_dir.with_name(settings.upload_dir.name + suffix))
        shutil.copytree(uploads_copy, settings.upload_dir)
    log.info("backup restored", extra={"path": str(source)})
    return settings.qdrant_path
