"""Backups of what cannot be rebuilt from the catalogue: the store, and the items added over the API.

Embedded store: a consistent copy of ``QDRANT_PATH`` taken while this process holds the store's
lock (no other process can write meanwhile) after the engine flushed, plus ``UPLOAD_DIR`` (the
uploaded images and the upload journal). Restore puts such a copy back, again under the lock.
A Qdrant server takes its own snapshot (Qdrant's snapshot API); the upload folder is copied.

Both are whole or nothing (`lookalike.files.whole_or_not`): a backup stopped midway (a full disk,
a kill) leaves no folder that looks like a backup, and a restore stopped midway leaves the store
it was replacing in place and serving.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from lookalike.errors import CatalogueError, StoreError
from lookalike.files import whole_or_not
from lookalike.journal import FOLDER as JOURNAL_FOLDER
from lookalike.lockfile import LOCK_FILE
from lookalike.settings import Settings
from lookalike.store import VectorStore
from lookalike.store.qdrant import QdrantStore

log = logging.getLogger(__name__)
STORE_FOLDER, UPLOADS_FOLDER = "qdrant", "uploads"


def backup(settings: Settings, destination: Path) -> Path:
    """Write a backup into a new folder under ``destination``; returns that folder."""
    target = Path(destination) / time.strftime("lookalike-backup-%Y%m%d-%H%M%S")
    if target.exists():
        raise FileExistsError(f"a backup of this second exists already: {target}")
    store = VectorStore.from_settings(settings)  # first: holds the lock (embedded) before any write
    try:
        with whole_or_not(target) as folder:
            if isinstance(store, QdrantStore) and not store.embedded:
                (folder / "server-snapshot.txt").write_text(f"{store.physical_name()} {store.snapshot()}\n")
            else:
                store.flush()
                shutil.copytree(settings.qdrant_path, folder / STORE_FOLDER, ignore=shutil.ignore_patterns(LOCK_FILE))
            if settings.upload_dir.is_dir():
                copy_uploads(settings.upload_dir, folder / UPLOADS_FOLDER)
    finally:
        store.close()
    log.info("backup written", extra={"path": str(target)})
    return target


def copy_uploads(uploads: Path, copy: Path) -> None:
    """The journal's entries first, then the photos. A Qdrant server's API takes ``PUT``s during
    a backup, and each saves its photo before its entry: every entry copied then has its photo
    copied after it (a photo without an entry is only an unused file)."""
    entries = uploads / JOURNAL_FOLDER
    if entries.is_dir():
        shutil.copytree(entries, copy / JOURNAL_FOLDER)
    top = uploads.resolve()
    shutil.copytree(
        uploads,
        copy,
        ignore=lambda folder, _: [JOURNAL_FOLDER] if Path(folder).resolve() == top else [],
        dirs_exist_ok=True,
    )


def restore(settings: Settings, source: Path) -> Path:
    """Put an embedded backup back in place; the current folders are kept beside, renamed."""
    if not settings.embedded:
        raise StoreError("restore a Qdrant server from its snapshot with Qdrant's own API (README: Backup and restore)")
    store_copy = Path(source) / STORE_FOLDER
    if not store_copy.is_dir() or Path(source).name.endswith(".partial"):
        raise CatalogueError(f"{source} is not a backup written by `python -m ingest --backup` (no {STORE_FOLDER}/)")
    suffix = time.strftime(".before-restore-%Y%m%d-%H%M%S")
    store = VectorStore.from_settings(settings)  # fails while the API or an ingest holds the store
    try:
        _put_in_place(store_copy, settings.qdrant_path, suffix)
    finally:
        store.close()
    uploads_copy = Path(source) / UPLOADS_FOLDER
    if uploads_copy.is_dir():
        _put_in_place(uploads_copy, settings.upload_dir, suffix)
    log.info("backup restored", extra={"path": str(source)})
    return settings.qdrant_path


def _put_in_place(copy: Path, live: Path, suffix: str) -> None:
    """Copy beside ``live`` first (a failure leaves it as it was), then swap: ``live`` moves aside."""
    incoming = live.with_name(live.name + ".restoring")
    shutil.rmtree(incoming, ignore_errors=True)  # copied by a restore killed before its swap
    with whole_or_not(incoming) as folder:
        shutil.copytree(copy, folder, dirs_exist_ok=True)
    if live.exists():
        live.rename(live.with_name(live.name + suffix))
    incoming.rename(live)
