"""The record of items added over the API, kept beside their uploaded images.

The store holds one model's vectors; a rollout to another model builds a new collection and
drops the old one. Catalogue items are rebuilt from the catalogue, and API-added items from
this journal: one JSON file per item under ``<UPLOAD_DIR>/items/`` (named by the item's point
id, written atomically), holding what the item is without any model's vector. ``PUT`` writes
its entry before the store, ``DELETE`` removes it first; ingest replays it into a collection.

A deployment that added items before the journal existed has them only in its store: the first
ingest or reindex copies those into the journal (`seed`) before anything relies on it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from lookalike.catalogue import Catalogue, CatalogueItem, RowError, resolve_inside
from lookalike.files import sync_directory, write_atomically
from lookalike.points import StoredItem, point_id

log = logging.getLogger(__name__)

FOLDER = "items"
#: Written once the journal holds every API-added item (after seeding from a store).
COMPLETE_MARKER = ".complete"
UPLOAD = "upload"


class UploadJournal:
    def __init__(self, upload_dir: Path) -> None:
        self.upload_dir = Path(upload_dir)
        self.folder = self.upload_dir / FOLDER

    @property
    def complete(self) -> bool:
        """True once the journal is the whole truth about API-added items (seeded)."""
        return (self.folder / COMPLETE_MARKER).is_file()

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

    def seed(self, stored: Iterable[StoredItem]) -> int:
        """Copy API-added items that only a store knows into the journal (once); returns how many."""
        if self.complete:
            return 0
        added = 0
        for item in stored:
            path = self._path(item.id)
            if not path.exists():
                self._write(path, _entry(item))
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
                entry = json.loads(path.read_text(encoding="utf-8"))
                image_path = resolve_inside(root, entry["image"])
                items.append(
                    CatalogueItem(
                        entry["id"],
                        image_path,
                        entry["image"],
                        entry["category"],
                        entry.get("metadata") or {},
                        entry.get("product_id"),
                        image_source=UPLOAD,
                    )
                )
            except (OSError, ValueError, KeyError, TypeError) as e:
                errors.append(RowError(None, str(path), f"unreadable upload journal entry: {e}"))
        return Catalogue(root=root, items=items, errors=errors, source=UPLOAD)

    def _path(self, item_id: str) -> Path:
        return self.folder / f"{point_id(item_id)}.json"  # ids may be "..": never a file name

    def _write(self, path: Path, data: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(data).encode())

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


def _entry(item: StoredItem) -> dict:
    return {
        "id": item.id,
        "category": item.category,
        "image": item.image,
        "sha256": item.sha256,
        "metadata": item.metadata,
        "product_id": item.product_id,
    }
