"""The record of items added over the API, kept beside their uploaded images.

The store holds one model's vectors; a rollout to another model builds a new collection and
drops the old one. Catalogue items are rebuilt from the catalogue, and API-added items from
this journal: one JSON file per item under ``<UPLOAD_DIR>/items/`` (named by the item's point
id, written atomically), holding what the item is without any model's vector. ``PUT`` writes
its entry before the store, ``DELETE`` removes it first; ingest replays it into a collection.
The photos sit in ``<UPLOAD_DIR>/`` named by their bytes' sha256; ingest removes those that no
item names any more (a replaced photo, a deleted item), so the folder does not grow forever.

A deployment that added items before the journal existed has them only in its store: the first
ingest or reindex copies those into the journal (`seed`) before anything relies on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path

from lookalike.catalogue import Catalogue, CatalogueItem, RowError, resolve_inside
from lookalike.files import sync_directory, write_atomically
from lookalike.points import StoredItem, point_id

log = logging.getLogger(__name__)

FOLDER = "items"
#: Written once the journal holds every API-added item (after seeding from a store).
COMPLETE_MARKER = ".complete"
UPLOAD = "upload"
#: How ``PUT`` names a photo: its bytes' sha256 and the format's extension (service/items.py).
PHOTO_NAME = re.compile(r"[0-9a-f]{64}\.[a-z]{3,4}")
#: A photo no item names is removed once it is this old: a ``PUT`` in flight has saved its photo
#: (or refreshed an existing one's time) but not yet written its entry.
PHOTO_GRACE_S = 3600.0
#: Taken shared while a ``PUT`` saves or reclaims a photo, exclusively while a sweep removes one.
PHOTOS_LOCK = ".photos.lock"
#: What `write_atomically` leaves when the process is killed mid-write: ``.<name>.<random>.tmp``.
HALF_WRITTEN = re.compile(r"\..+\.tmp")
#: ``PUT`` and ``DELETE`` of one item hold one of these locks (chosen by its point id), in every
#: process: a request and its retry reach the journal and the store in the same order.
ITEM_LOCKS = 64
#: Items the first seed asks the store about at a time (`UploadJournal.seed`).
SEED_PAGE = 256
#: The names of the lock files (empty files: neither photos nor entries).
LOCK_FILES = re.compile(rf"{re.escape(PHOTOS_LOCK)}|\.lock-\d+")


class UploadJournal:
    def __init__(self, upload_dir: Path) -> None:
        self.upload_dir = Path(upload_dir)
        self.folder = self.upload_dir / FOLDER

    @property
    def complete(self) -> bool:
        """True once the journal is the whole truth about API-added items (seeded)."""
        return (self.folder / COMPLETE_MARKER).is_file()

    @contextlib.contextmanager
    def item_locked(self, item_id: str) -> Iterator[None]:
        """Hold the item's lock: without it, a ``PUT`` whose store write failed would undo its entry
        after a retry of it had written the same entry and stored the item (the next ingest then
        deletes the item as no longer in the journal)."""
        with self._stripes_locked({_stripe(item_id)}):
            yield

    @contextlib.contextmanager
    def entries_while_locked(self, item_ids: Iterable[str]) -> Iterator[dict[str, CatalogueItem | None]]:
        """Hold these items' locks, shared, and yield their entries as they are now (None: none,
        or one unreadable). Ingest writes a batch under them, so a ``PUT`` or ``DELETE`` while it
        runs happens before the batch (and ingest sees it) or after it (and wins), never under it."""
        item_ids = list(item_ids)
        with self._stripes_locked({_stripe(i) for i in item_ids}, fcntl.LOCK_SH):
            yield {item_id: self._entry_item(self._path(item_id)) for item_id in item_ids}

    @contextlib.contextmanager
    def recording(self, item: StoredItem) -> Iterator[None]:
        """Write (or replace) the item's entry before the block (the store write); undone if it fails."""
        path = self._path(item.id)
        previous = path.read_bytes() if path.is_file() else None
        self._write(path, _entry(item))
        with self._undone_on_failure(path, previous):
            yield

    @contextlib.contextmanager
    def forgetting(self, item_id: str) -> Iterator[None]:
        """Remove the item's entry before the block (the store delete); put back if it fails."""
        path = self._path(item_id)
        previous = path.read_bytes() if path.is_file() else None
        path.unlink(missing_ok=True)
        if previous is not None:  # on disk before the store forgets it: else a power cut could bring it back
            sync_directory(path.parent)
        with self._undone_on_failure(path, previous):
            yield

    @contextlib.contextmanager
    def photo_saved(self, name: str, data: bytes) -> Iterator[Path]:
        """Keep an uploaded photo under ``name`` for as long as the block succeeds.

        A file this call created is removed again when the block fails, so a failed ``PUT``
        leaves no orphan, unless a ``PUT`` of the same bytes (another item) has claimed it since;
        one that was already there gets a fresh time instead, so that no sweep takes it meanwhile.
        That time is each call's own (nanoseconds), so it also tells who claimed the file last.
        """
        target = self.upload_dir / name
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        with self._photos_locked(fcntl.LOCK_SH):
            created = not target.exists()
            if created:
                write_atomically(target, data)
            stamp = time.time_ns()
            os.utime(target, ns=(stamp, stamp))
            claimed = target.stat().st_mtime_ns  # as the file system keeps it
        try:
            yield target
        except BaseException:
            if created:
                with self._photos_locked(fcntl.LOCK_EX), contextlib.suppress(FileNotFoundError):
                    if target.stat().st_mtime_ns == claimed:  # nobody else's since
                        target.unlink()
            raise

    def sweep_photos(self, also_named: Iterable[str] = (), grace_s: float = PHOTO_GRACE_S) -> list[str]:
        """Remove the photos that no entry names (nor ``also_named``: what a store's items name),
        and what a write killed midway left, older than ``grace_s``; returns the photos' names.
        Nothing is removed while an entry is unreadable (its photo is unknown), nor a photo a
        ``PUT`` is saving at that moment."""
        journal = self.catalogue()
        if journal.errors or not self.complete:
            return []
        named = {item.image for item in journal.items} | set(also_named)
        unused = [
            path for path in _files(self.upload_dir) if PHOTO_NAME.fullmatch(path.name) and path.name not in named
        ]
        half_written = [
            path
            for folder in (self.upload_dir, self.folder)
            for path in _files(folder)
            if HALF_WRITTEN.fullmatch(path.name)
        ]
        cutoff = time.time() - grace_s
        removed: list[str] = []
        for path in unused + half_written:
            with self._photos_locked(fcntl.LOCK_EX | fcntl.LOCK_NB) as locked, contextlib.suppress(FileNotFoundError):
                if locked and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path.name)
                    log.info("unused upload file removed", extra={"file": str(path.relative_to(self.upload_dir))})
        return [name for name in removed if PHOTO_NAME.fullmatch(name)]

    def seed(self, stored: Iterable[StoredItem], still_stored: Callable[[list[str]], Collection[str]]) -> int:
        """Copy API-added items that only a store knows into the journal (once); returns how many.

        Each entry is written under its item's lock once ``still_stored`` (the store, asked again)
        says the item is there: a ``DELETE`` after the store was listed found no entry to remove,
        and must not get one back (the next ingest would restore the item from its photo).
        """
        if self.complete:
            return 0
        added, stored = 0, iter(stored)
        while chunk := list(itertools.islice(stored, SEED_PAGE)):
            page = [item for item in chunk if not self._path(item.id).exists()]
            with self._stripes_locked({_stripe(item.id) for item in page}, fcntl.LOCK_SH):
                held = still_stored([item.id for item in page]) if page else ()
                for item in page:
                    if item.id in held and not self._path(item.id).exists():
                        self._write(self._path(item.id), _entry(item))
                        added += 1
        self._write(self.folder / COMPLETE_MARKER, {"seeded": added})
        log.info("upload journal seeded from the store", extra={"items": added})
        return added

    def catalogue(self) -> Catalogue:
        """The journal as a catalogue of upload items (images relative to UPLOAD_DIR)."""
        items: list[CatalogueItem] = []
        errors: list[RowError] = []
        root = self.upload_dir.resolve()
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            try:
                items.append(self._read_entry(path, root))
            except (OSError, ValueError, KeyError, TypeError) as e:
                errors.append(RowError(None, str(path), f"unreadable upload journal entry: {e}"))
        return Catalogue(root=root, items=items, errors=errors, source=UPLOAD)

    def _read_entry(self, path: Path, root: Path) -> CatalogueItem:
        entry = json.loads(path.read_text(encoding="utf-8"))
        image_path = resolve_inside(root, entry["image"])
        metadata, product_id = entry.get("metadata") or {}, entry.get("product_id")
        return CatalogueItem(entry["id"], image_path, entry["image"], entry["category"], metadata, product_id, UPLOAD)

    def _entry_item(self, path: Path) -> CatalogueItem | None:
        """The entry at ``path``, None when there is none or it cannot be read."""
        try:
            return self._read_entry(path, self.upload_dir.resolve())
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _path(self, item_id: str) -> Path:
        return self.folder / f"{point_id(item_id)}.json"  # ids may be "..": never a file name

    def _write(self, path: Path, data: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(data).encode())

    @contextlib.contextmanager
    def _stripes_locked(self, stripes: set[int], mode: int = fcntl.LOCK_EX) -> Iterator[None]:
        """Item locks, taken in ascending order so two holders of several never deadlock:
        exclusive for the API's writes, shared (``LOCK_SH``) for ingest's, which may overlap each
        other (parallel ``--shard`` workers) but not a ``PUT`` or ``DELETE``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as held:
            for stripe in sorted(stripes):
                lock = held.enter_context((self.folder / f".lock-{stripe:02d}").open("a"))
                fcntl.flock(lock, mode)  # released when the file closes
            yield

    @contextlib.contextmanager
    def _photos_locked(self, mode: int) -> Iterator[bool]:
        """The photos lock in ``mode``; yields False when a non-blocking request found it taken."""
        with (self.upload_dir / PHOTOS_LOCK).open("a") as lock:
            try:
                fcntl.flock(lock, mode)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _undone_on_failure(self, path: Path, previous: bytes | None) -> Iterator[None]:
        try:
            yield
        except BaseException:
            if previous is None:
                path.unlink(missing_ok=True)
            else:
                with contextlib.suppress(OSError):
                    path.write_bytes(previous)
            raise


def _stripe(item_id: str) -> int:
    return uuid.UUID(point_id(item_id)).int % ITEM_LOCKS


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.is_file() and not path.is_symlink())


def _entry(item: StoredItem) -> dict:
    return {
        "id": item.id,
        "category": item.category,
        "image": item.image,
        "sha256": item.sha256,
        "metadata": item.metadata,
        "product_id": item.product_id,
    }
