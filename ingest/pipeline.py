"""Catalogue -> (read, hash, decode in worker processes) -> embed in batches -> write.

Stages, each timed in the summary: ``lookup`` (what the store holds of these ids), ``read``
(waiting for the workers, which read every file once and decode only new or changed images),
``embed``, and on a writer thread ``near_duplicates`` and ``upsert``; then ``prune`` and ``index``.
Incremental: an item whose image bytes (sha256) and model are unchanged is not decoded again; if
only its category or metadata changed, its payload is rewritten. Every batch is written before
the next starts (and synced to disk every `SYNC_EVERY_S`), so a killed run loses at most the batch
in flight and a rerun finishes. `ingest_all` runs the pass over the catalogue, then over the items
added through the API (the upload journal); `ingest.rebuild` reindexes and verifies through it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ingest.decode import Batch, Decoded, iter_batches
from ingest.duplicates import ExactDuplicates, NearDuplicates
from ingest.removal import PruneLimit, unlisted
from ingest.report import ErrorReport, IngestSummary
from lookalike.catalogue import Catalogue, CatalogueItem, Shard, take_shard
from lookalike.errors import ItemNotFound, StoreUnavailable
from lookalike.journal import UPLOAD, UploadJournal
from lookalike.looks import Look
from lookalike.points import StoredItem
from lookalike.queries import NearDuplicateRule
from lookalike.runtime import Encoder
from lookalike.store import VectorStore

log = logging.getLogger(__name__)
LOOKUP_CHUNK = 256
RETRY_ATTEMPTS = 5
RETRY_FIRST_DELAY_S = 1.0
#: Ingest's writes reach the disk at least this often and at the end of a pass (`writing_behind`):
#: a power cut costs the rerun at most this much work again.
SYNC_EVERY_S = 5.0


@dataclass(frozen=True)
class IngestOptions:
    """How a run reads, embeds and writes (`python -m ingest` fills it from settings and flags)."""

    batch_size: int = 32
    workers: int = 2  # decode processes; 0 reads in this process
    max_pixels: int = 40_000_000
    prune: bool = False  # delete items of this source the catalogue no longer lists
    progress: bool = True
    index_duplicates: bool = True  # False: duplicates are reported, not stored (--skip-duplicates)
    near_duplicates: NearDuplicateRule | None = None  # None: only same bytes count as duplicates
    filterable_fields: Sequence[str] = ()  # metadata fields indexed in a new collection
    max_prune: PruneLimit = dataclasses.field(default_factory=PruneLimit)  # what a reindex may leave out
    sync_every_s: float = SYNC_EVERY_S  # the embedded store's writes reach the disk this often (0: each)


@dataclass
class _Run:
    """What every batch of one run writes to."""

    encoder: Encoder
    store: VectorStore
    report: ErrorReport
    summary: IngestSummary
    options: IngestOptions
    stored: dict[str, StoredItem]
    bar: tqdm
    near_duplicates: NearDuplicates | None
    journal: UploadJournal | None  # items the API changes meanwhile are left to it


def ingest(
    catalogue: Catalogue,
    encoder: Encoder,
    store: VectorStore,
    report: ErrorReport,
    options: IngestOptions = IngestOptions(),
    journal: UploadJournal | None = None,
) -> IngestSummary:
    """Bring the collection in line with the catalogue; returns what was done. With the upload
    ``journal``, an item that the API changes while this runs is left to the API."""
    started = time.perf_counter()
    summary = IngestSummary()
    for error in catalogue.errors:
        report.row_error(error)
        summary.failed += 1
    with summary.stage("lookup"):
        stored = _stored(store, catalogue.items)
    same_model = {item_id: s.sha256 for item_id, s in stored.items() if s.model == encoder.identity}
    shown = options.progress and bool(catalogue.items)  # no empty bar for a pass with nothing to do
    bar = tqdm(total=len(catalogue.items), unit="img", desc="ingest", disable=not shown)
    gpu = encoder.placement.device if encoder.placement.device.type == "cuda" else None
    near_duplicates = None
    if options.near_duplicates is not None:  # other shards write beside this one: ask the store
        ask_store = catalogue.shard is not None or store.count() > 0
        near_duplicates = NearDuplicates(
            store, options.near_duplicates, report, summary, ask_store=ask_store, device=gpu
        )
    batches = iter_batches(
        catalogue.items,
        same_model,
        encoder.worker_preprocess,
        max_pixels=options.max_pixels,
        batch_size=options.batch_size,
        workers=options.workers,
        pin_memory=gpu is not None,  # page-locked batches copy to the GPU asynchronously
    )
    with bar, store.writing_behind(options.sync_every_s) as writes:
        run = _Run(encoder, writes, report, summary, options, stored, bar, near_duplicates, journal)
        _embed_and_write(run, batches, ExactDuplicates(report, summary))
    if options.prune:
        with summary.stage("prune"):
            summary.pruned = _prune(catalogue, store, journal)
    if summary.ingested or summary.pruned:
        with summary.stage("index"):
            store.optimize()
    summary.seconds = time.perf_counter() - started
    return summary


def _embed_and_write(run: _Run, batches: Iterator[Batch], duplicates: ExactDuplicates) -> None:
    """Wait for each batch from the workers, embed it, and hand it to the writer thread."""
    with BatchWriter(lambda *job: _write(run, *job)) as writer:
        while True:
            with run.summary.stage("read"):  # waiting for the workers
                batch = next(batches, None)
            if batch is None:
                return
            copies = {d.item.id for d in batch.decoded if d.sha256 and duplicates.seen(d.item, d.sha256)}
            embeddings = None
            if batch.pixels is not None:
                with run.summary.stage("embed"):
                    embeddings = run.encoder.embed_batch(batch.pixels)
            writer.put(batch, embeddings, copies)


class BatchWriter:
    """Writes embedded batches on a thread of its own, in order, one batch behind the model.

    The store's work per batch (near-duplicate queries, the upsert) then overlaps the next
    batch's decoding and forward pass instead of adding to them. A failure stops the run at the
    next batch handed over (or at the end), with its own exception.
    """

    def __init__(self, write: Callable[..., None], depth: int = 2) -> None:
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ingest-writer", daemon=True)

    def __enter__(self) -> BatchWriter:
        self._thread.start()
        return self

    def put(self, *job: object) -> None:
        self._raise_if_failed()
        self._queue.put(job)

    def __exit__(self, kind, error, trace) -> None:
        self._queue.put(None)
        self._thread.join()
        if error is None:
            self._raise_if_failed()

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(*job)
                except BaseException as e:  # handed to the main thread
                    self._error = e

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error


def _write(run: _Run, batch: Batch, embeddings: np.ndarray | None, copies: set[str]) -> None:
    """Report a batch's failures, rewrite changed payloads of unchanged images, check the new
    images for near-duplicates, upsert what is kept."""
    vectors = iter(embeddings if embeddings is not None else [])
    unchanged: list[Decoded] = []
    new: list[tuple[Decoded, Look]] = []
    for decoded in batch.decoded:
        if decoded.error is not None:
            run.report.item_error(decoded.item, decoded.error)
            run.summary.failed += 1
        elif decoded.unchanged:
            unchanged.append(decoded)
        else:
            look = Look(next(vectors), decoded.colour)  # type: ignore[arg-type]
            if run.options.index_duplicates or decoded.item.id not in copies:
                new.append((decoded, look))
    if new and run.near_duplicates is not None:
        with run.summary.stage("near_duplicates"):
            alike = run.near_duplicates.check([d.item for d, _ in new], [look for _, look in new], copies)
        if not run.options.index_duplicates:
            new = [(d, look) for d, look in new if d.item.id not in alike]
    with _journal_locked(run, [d.item for d in (*unchanged, *(d for d, _ in new))]) as changed_by_api:
        for decoded in unchanged:
            if decoded.item.id not in changed_by_api:
                _sync_payload(run, decoded)
        new = [(d, look) for d, look in new if d.item.id not in changed_by_api]
        if new:
            stored = [_stored_item(d.item, d.sha256, run.encoder.identity) for d, _ in new]  # type: ignore[arg-type]
            with run.summary.stage("upsert"):
                upsert_with_retry(run.store, stored, [look for _, look in new])
            run.summary.ingested += len(stored)
            log.info("batch upserted", extra={"items": len(stored), "first": stored[0].id})
    for item_id in sorted(changed_by_api):
        log.info("item changed over the API during the run: left to the API", extra={"item_id": item_id})
    run.summary.skipped += len(changed_by_api)
    run.bar.update(len(batch.decoded))


@contextlib.contextmanager
def _journal_locked(run: _Run, items: list[CatalogueItem]) -> Iterator[set[str]]:
    """The ids among ``items`` that the API changed since this run read the journal: a ``PUT``
    on a catalogue item's id, a ``PUT`` or ``DELETE`` of an API item. Their item locks are held
    while the batch is written (`UploadJournal.entries_while_locked`)."""
    if run.journal is None or not items:
        yield set()
        return
    with run.journal.entries_while_locked(item.id for item in items) as entries:
        yield {item.id for item in items if _changed_by_api(item, entries[item.id])}


def _changed_by_api(item: CatalogueItem, entry: CatalogueItem | None) -> bool:
    """A catalogue item the journal now lists, or an API item whose entry is no longer the one read."""
    return entry is not None if item.image_source != UPLOAD else entry != item


def upsert_with_retry(
    store: VectorStore, items: Sequence[StoredItem], looks: Sequence[Look], attempts: int = RETRY_ATTEMPTS
) -> None:
    """A server that is briefly unreachable costs a pause, not the run; then it stops with the cause."""
    for attempt in range(1, attempts + 1):
        try:
            store.upsert(items, looks)
            return
        except StoreUnavailable as e:
            if attempt == attempts:
                raise StoreUnavailable(f"{e.message} (gave up after {attempts} attempts)") from e
            delay = RETRY_FIRST_DELAY_S * 2 ** (attempt - 1)
            log.warning(
                "store unavailable, retrying", extra={"attempt": attempt, "delay_s": delay, "reason": e.message}
            )
            time.sleep(delay)


def _stored(store: VectorStore, items: Sequence[CatalogueItem]) -> dict[str, StoredItem]:
    """What the store holds of these items' ids, asked a chunk at a time."""
    stored: dict[str, StoredItem] = {}
    for start in range(0, len(items), LOOKUP_CHUNK):
        stored.update(store.get_many([item.id for item in items[start : start + LOOKUP_CHUNK]]))
    return stored


def _sync_payload(run: _Run, decoded: Decoded) -> None:
    """An image stored with the same bytes and model: rewrite its payload if that changed."""
    wanted = _stored_item(decoded.item, decoded.sha256, run.encoder.identity)  # type: ignore[arg-type]
    if wanted == run.stored[decoded.item.id]:
        run.summary.skipped += 1
        return
    try:
        run.store.replace_payload(wanted)
    except ItemNotFound:  # deleted over the API since this run looked it up: the next run adds it again
        log.warning("item deleted during the run: payload not updated", extra={"item_id": decoded.item.id})
        run.summary.skipped += 1
        return
    run.summary.updated += 1
    log.info("payload updated", extra={"item_id": decoded.item.id})


def _stored_item(item: CatalogueItem, sha256: str, model: str) -> StoredItem:
    return StoredItem(
        id=item.id,
        category=item.category,
        image=item.image,
        sha256=sha256,
        model=model,
        image_source=item.image_source,
        metadata=item.metadata,
        product_id=item.product_id,
    )


def _prune(catalogue: Catalogue, store: VectorStore, journal: UploadJournal | None) -> int:
    """Delete items of the catalogue's source no longer listed (failing ones stay; catalogue runs
    keep items added over the API, and the other way round)."""
    return _delete_unlisted(catalogue, store.item_ids(image_source=catalogue.source), store, journal)


def _delete_unlisted(
    catalogue: Catalogue, stored_ids: Iterable[str], store: VectorStore, journal: UploadJournal | None
) -> int:
    """Delete the stored items the catalogue does not list, but for those the journal lists by
    the time they are deleted (under their item locks): a ``PUT`` since the store was listed."""
    gone = unlisted(catalogue, stored_ids)
    with journal.entries_while_locked(gone) if journal else contextlib.nullcontext({}) as entries:
        gone = [item_id for item_id in gone if entries.get(item_id) is None]
        store.delete(gone)
    for item_id in gone:
        log.info("item pruned", extra={"item_id": item_id, "source": catalogue.source})
    return len(gone)


def ingest_all(
    catalogue: Catalogue,
    journal: UploadJournal,
    encoder: Encoder,
    store: VectorStore,
    report: ErrorReport,
    options: IngestOptions = IngestOptions(),
) -> IngestSummary:
    """The catalogue, then the items added over the API (`sync_uploads`), into one collection.

    An id that the API replaced (``PUT`` on a catalogue item) is the API's until it is deleted:
    the catalogue pass leaves it alone, so the two never overwrite each other run after run.
    Then the uploaded photos that no item names any more are removed (`UploadJournal.sweep_photos`).
    """
    uploads = uploads_of(journal, catalogue.shard)
    replaced = {item.id for item in uploads.items}
    own = dataclasses.replace(catalogue, items=[item for item in catalogue.items if item.id not in replaced])
    summary = ingest(own, encoder, store, report, options, journal)
    summary.add(sync_uploads(uploads, journal, encoder, store, report, options))
    summary.photos_removed += len(journal.sweep_photos(item.image for item in store.stored_items(UPLOAD)))
    return summary


def seed_journal(journal: UploadJournal, store: VectorStore) -> None:
    """Once: copy the API-added items of the serving collection that predate the journal into it."""
    if not journal.complete:
        stored = store.stored_items(UPLOAD) if store.collection_exists() else iter(())
        journal.seed(stored, lambda item_ids: store.get_many(item_ids).keys())


def sync_uploads(
    uploads: Catalogue,
    journal: UploadJournal,
    encoder: Encoder,
    store: VectorStore,
    report: ErrorReport,
    options: IngestOptions = IngestOptions(),
) -> IngestSummary:
    """Bring the collection's API-added items in line with the upload journal (re-embedding
    those it lacks or holds from another model). An upload whose image is missing fails its
    item in the report; its journal entry stays, so it is never silently lost."""
    options = dataclasses.replace(options, prune=False, index_duplicates=True, near_duplicates=None)
    summary = ingest(uploads, encoder, store, report, options, journal)
    if journal.complete and not uploads.errors:  # an unreadable entry must not delete its item
        started = time.perf_counter()
        with summary.stage("prune"):
            summary.pruned = _prune_uploads(journal, store, uploads.shard)
        summary.seconds += time.perf_counter() - started
    return summary


def _prune_uploads(journal: UploadJournal, store: VectorStore, shard: Shard | None) -> int:
    """Delete the API items that the journal no longer lists (deleted over the API), judged by
    the journal as it is once the store has been listed: a ``PUT`` writes its entry before the
    store, so an item added while this run embedded the others is kept."""
    stored = list(store.item_ids(image_source=UPLOAD))
    journal_now = uploads_of(journal, shard)
    if journal_now.errors:
        return 0
    return _delete_unlisted(journal_now, stored, store, journal)


def uploads_of(journal: UploadJournal, shard: Shard | None) -> Catalogue:
    uploads = journal.catalogue()
    return take_shard(uploads, shard) if shard else uploads
