"""What an ingest run did: the counts, and a JSONL line for every item that failed."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from lookalike.catalogue import CatalogueItem, RowError
from lookalike.errors import InvalidImage

log = logging.getLogger(__name__)


@dataclass
class IngestSummary:
    ingested: int = 0
    skipped: int = 0
    updated: int = 0  # payload rewritten, embedding kept
    failed: int = 0
    pruned: int = 0
    duplicates: int = 0  # same bytes as an earlier item (indexed unless --skip-duplicates)
    near_duplicates: int = 0  # looks the same as a stored item (indexed unless --skip-duplicates)
    repaired: int = 0  # damaged points found by --verify, deleted and embedded again
    photos_removed: int = 0  # uploaded photos no item names any more
    seconds: float = 0.0
    #: Seconds per stage: hash, lookup, decode (waiting for the workers), embed, near_duplicates,
    #: upsert, prune, index (the HNSW build).
    stages: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - started

    def stages_line(self) -> str:
        return "stages_s " + " ".join(f"{name}={seconds:.2f}" for name, seconds in self.stages.items())

    def add(self, other: IngestSummary) -> None:
        """Count another pass (the API-added items after the catalogue) into this summary."""
        for counter in dataclasses.fields(self):
            if counter.name != "stages":  # the counts and the seconds add up
                setattr(self, counter.name, getattr(self, counter.name) + getattr(other, counter.name))
        for name, seconds in other.stages.items():
            self.stages[name] = self.stages.get(name, 0.0) + seconds

    @property
    def images_per_second(self) -> float:
        return self.ingested / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"ingested={self.ingested} skipped={self.skipped} updated={self.updated} failed={self.failed} "
            f"pruned={self.pruned} duplicates={self.duplicates} near_duplicates={self.near_duplicates} "
            f"seconds={self.seconds:.1f} "
            f"images_per_s={self.images_per_second:.1f}"
            + (f" repaired={self.repaired}" if self.repaired else "")
            + (f" photos_removed={self.photos_removed}" if self.photos_removed else "")
        )


class ErrorReport:
    """One JSON object per failed (or duplicate) item: ``{"item_id", "path", "code", "reason"}``."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    @classmethod
    def open(cls, path: Path) -> ErrorReport:
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(path.open("w", encoding="utf-8"))

    def item_error(self, item: CatalogueItem, error: InvalidImage) -> None:
        self._write(item.id, item.image, error.code, error.message)

    def duplicate(self, item: CatalogueItem, original_id: str) -> None:
        self._write(item.id, item.image, "duplicate", f"same image bytes as item {original_id!r}", "duplicate item")

    def near_duplicate(self, item: CatalogueItem, original_id: str, colour_similarity: float) -> None:
        reason = f"looks the same as item {original_id!r} (colour similarity {colour_similarity:.3f})"
        self._write(item.id, item.image, "near_duplicate", reason, "near-duplicate item")

    def stray(self, item_id: str) -> None:
        reason = "stored, but the catalogue no longer lists it (python -m ingest --prune removes it)"
        self._write(item_id, None, "not_in_catalogue", reason, "stray item")

    def damaged(self, item_id: str | None, reason: str) -> None:
        self._write(item_id, None, "damaged", reason, "damaged item")

    def row_error(self, error: RowError) -> None:
        self._write(error.item_id, error.path, "invalid_row", error.reason)

    def close(self) -> None:
        self.stream.close()

    def _write(self, item_id: str | None, path: str | None, code: str, reason: str, event: str = "item failed") -> None:
        record = {"item_id": item_id, "path": path, "code": code, "reason": reason}
        log.warning(event, extra=record)
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()
