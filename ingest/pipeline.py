"""Catalogue -> (decode + preprocess in worker processes) -> embed in batches -> upsert.

Incremental: an item whose image bytes (sha256) and model are unchanged is not decoded again;
if only its category or metadata changed, its payload is rewritten. Every batch is committed
before the next starts, so a killed run loses at most the batch in flight and a rerun finishes.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ingest.duplicates import report_exact_duplicates, report_near_duplicates
from ingest.report import ErrorReport, IngestSummary
from lookalike.catalogue import Catalogue, CatalogueItem, Shard, take_shard
from lookalike.colour import colour_histogram
from lookalike.encoder import ImageEncoder, Preprocess
from lookalike.errors import InvalidImage, StoreDamaged, StoreError, StoreUnavailable
from lookalike.images import decode_image, read_bytes, sha256_hex
from lookalike.journal import UPLOAD, UploadJournal
from lookalike.looks import Look
from lookalike.points import StoredItem
from lookalike.queries import NearDuplicateRule
from lookalike.store import VectorStore

log = logging.getLogger(__name__)
LOOKUP_CHUNK = 256
HASH_THREADS = min(16, os.cpu_count() or 1)
RETRY_ATTEMPTS = 5
RETRY_FIRST_DELAY_S = 1.0


@dataclass(frozen=True)
class Decoded:
    """One item after the worker's pass: pixels ready for the model and its colour, or why it failed."""

    item: CatalogueItem
    sha256: str | None
    pixels: torch.Tensor | None
    colour: np.ndarray | None
    error: InvalidImage | None


@dataclass
class Batch:
    items: list[CatalogueItem]
    sha256s: list[str]
    pixels: torch.Tensor | None
    colours: list[np.ndarray]
    failed: list[Decoded]


class DecodeDataset(Dataset):
    """Reads, hashes, decodes, preprocesses and colour-describes one item; errors are returned, not raised."""

    def __init__(self, items: Sequence[CatalogueItem], preprocess: Preprocess, max_pixels: int) -> None:
        self.items = items
        self.preprocess = preprocess
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Decoded:
        item = self.items[index]
        try:
            data = read_bytes(item.path)
            image = decode_image(data, self.max_pixels)
            return Decoded(item, sha256_hex(data), self.preprocess(image), colour_histogram(image), None)
        except InvalidImage as e:
            return Decoded(item, None, None, None, e)


def collate(decoded: list[Decoded]) -> Batch:
    """Stack what decoded; carry the failures along so they are reported, not dropped."""
    ok = [d for d in decoded if d.error is None]
    return Batch(
        items=[d.item for d in ok],
        sha256s=[d.sha256 for d in ok],  # type: ignore[misc]
        pixels=torch.stack([d.pixels for d in ok]) if ok else None,  # type: ignore[misc]
        colours=[d.colour for d in ok],  # type: ignore[misc]
        failed=[d for d in decoded if d.error is not None],
    )


def iter_batches(
    items: Sequence[CatalogueItem],
    preprocess: Preprocess,
    max_pixels: int,
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
) -> Iterator[Batch]:
    """Decode in ``workers`` processes, ahead of the model, in catalogue order."""
    loader = DataLoader(
        DecodeDataset(items, preprocess, max_pixels),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        prefetch_factor=4 if workers else None,
        pin_memory=pin_memory,
        worker_init_fn=functools.partial(die_with_parent, os.getpid()) if workers else None,
    )
    yield from loader


PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, worker_id: int = 0) -> None:
    """In a decode worker: have the kernel kill it the moment ingest dies, even by ``kill -9``.

    Without this a worker blocked on a full queue outlives a killed ingest for a while. Linux only
    (elsewhere torch's own watchdog ends the workers, later); the parent may have died before
    this ran, which the pid check catches.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(0)


def ingest(
    catalogue: Catalogue,
    encoder: ImageEncoder,
    store: VectorStore,
    report: ErrorReport,
    *,
    batch_size: int = 32,
    workers: int = 2,
    max_pixels: int = 40_000_000,
    prune: bool = False,
    progress: bool = True,
    index_duplicates: bool = True,
    near_duplicates: NearDuplicateRule | None = None,
) -> IngestSummary:
    """Bring the collection in line with the catalogue; returns what was done.

    ``near_duplicates``: report items that look the same as another (None: only same bytes).
    """
    started = time.perf_counter()
    summary = IngestSummary()
    stage = summary.stage  # each stage's seconds go into the summary
    for error in catalogue.errors:
        report.row_error(error)
        summary.failed += 1
    with stage("hash"), ThreadPoolExecutor(HASH_THREADS) as pool:  # file reads and sha256 release the GIL
        hashes = pool.map(_sha256_or_none, catalogue.items)
        sha256s = dict(zip([item.id for item in catalogue.items], hashes, strict=True))
        duplicates = report_exact_duplicates(catalogue.items, sha256s, report, summary)
    with stage("lookup"):
        to_embed = _sync_unchanged(catalogue.items, sha256s, encoder.identity, store, summary)
    if not index_duplicates:
        to_embed = [item for item in to_embed if item.id not in duplicates]
    bar = tqdm(total=len(to_embed), unit="img", desc="ingest", disable=not progress)
    write = functools.partial(
        _write_batch,
        encoder=encoder,
        store=store,
        report=report,
        summary=summary,
        bar=bar,
        duplicates=duplicates,
        near_duplicates=near_duplicates,
        index_duplicates=index_duplicates,
    )
    with bar, BatchWriter(write) as writer:
        pin = encoder.placement.device.type == "cuda"  # page-locked batches copy to the GPU asynchronously
        batches = iter(iter_batches(to_embed, encoder.preprocess, max_pixels, batch_size, workers, pin))
        while True:
            with stage("decode"):  # waiting for the decode workers
                batch = next(batches, None)
            if batch is None:
                break
            embeddings = None
            if batch.pixels is not None:
                with stage("embed"):
                    embeddings = encoder.embed_batch(batch.pixels)
            writer.put(batch, embeddings)
    if prune:
        with stage("prune"):
            summary.pruned = _prune(catalogue, store)
    if summary.ingested or summary.pruned:
        with stage("index"):
            store.optimize()
    summary.seconds = time.perf_counter() - started
    return summary


class BatchWriter:
    """Writes embedded batches on a thread of its own, in order, one batch behind the model.

    The store's work per batch (near-duplicate queries, the upsert) then overlaps the next
    batch's decoding and forward pass instead of adding to them. A failure stops the run at the
    next batch handed over (or at the end), with its own exception.
    """

    def __init__(self, write: Callable[[Batch, np.ndarray | None], None], depth: int = 2) -> None:
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ingest-writer", daemon=True)

    def __enter__(self) -> BatchWriter:
        self._thread.start()
        return self

    def put(self, batch: Batch, embeddings: np.ndarray | None) -> None:
        self._raise_if_failed()
        self._queue.put((batch, embeddings))

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


def _write_batch(
    batch: Batch,
    embeddings: np.ndarray | None,
    *,
    encoder: ImageEncoder,
    store: VectorStore,
    report: ErrorReport,
    summary: IngestSummary,
    bar: tqdm,
    duplicates: set[str],
    near_duplicates: NearDuplicateRule | None,
    index_duplicates: bool,
) -> None:
    """Report a batch's failures, check it for near-duplicates, upsert what is kept."""
    for failure in batch.failed:
        report.item_error(failure.item, failure.error)  # type: ignore[arg-type]
    summary.failed += len(batch.failed)
    if embeddings is not None:
        looks = [Look(e, c) for e, c in zip(embeddings, batch.colours, strict=True)]
        stored = [_stored_item(i, s, encoder.identity) for i, s in zip(batch.items, batch.sha256s, strict=True)]
        if near_duplicates is not None:
            with summary.stage("near_duplicates"):
                alike = report_near_duplicates(batch.items, looks, store, near_duplicates, report, summary, duplicates)
            if not index_duplicates:
                kept = [n for n, item in enumerate(stored) if item.id not in alike]
                stored, looks = [stored[n] for n in kept], [looks[n] for n in kept]
        if stored:
            with summary.stage("upsert"):
                upsert_with_retry(store, stored, looks)
            summary.ingested += len(stored)
            log.info("batch upserted", extra={"items": len(stored), "first": stored[0].id})
    bar.update(len(batch.items) + len(batch.failed))


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


def _sync_unchanged(
    items: Sequence[CatalogueItem],
    sha256s: dict[str, str | None],
    model: str,
    store: VectorStore,
    summary: IngestSummary,
) -> list[CatalogueItem]:
    """Skip items already stored with the same bytes and model; return those to embed."""
    to_embed: list[CatalogueItem] = []
    for start in range(0, len(items), LOOKUP_CHUNK):
        chunk = items[start : start + LOOKUP_CHUNK]
        stored = store.get_many([item.id for item in chunk])
        for item in chunk:
            existing = stored.get(item.id)
            sha256 = sha256s[item.id]
            if existing is None or sha256 is None or existing.sha256 != sha256 or existing.model != model:
                to_embed.append(item)  # new, changed, or unreadable (the decode pass reports why)
                continue
            wanted = _stored_item(item, sha256, model)
            if wanted != existing:
                store.replace_payload(wanted)
                summary.updated += 1
                log.info("payload updated", extra={"item_id": item.id})
            else:
                summary.skipped += 1
    return to_embed


def _sha256_or_none(item: CatalogueItem) -> str | None:
    try:
        return sha256_hex(read_bytes(item.path))
    except InvalidImage:
        return None


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


def _prune(catalogue: Catalogue, store: VectorStore) -> int:
    """Delete items of the catalogue's source no longer listed (failing ones stay; catalogue runs
    keep items added over the API, and the other way round)."""
    gone = _unlisted(catalogue, store)
    store.delete(gone)
    for item_id in gone:
        log.info("item pruned", extra={"item_id": item_id, "source": catalogue.source})
    return len(gone)


def _unlisted(catalogue: Catalogue, store: VectorStore) -> list[str]:
    """Stored items of the catalogue's source (and shard) that the catalogue no longer lists."""
    listed = {item.id for item in catalogue.items} | {e.item_id for e in catalogue.errors if e.item_id}
    mine = catalogue.shard.holds if catalogue.shard else lambda item_id: True  # other workers' items stay
    return [i for i in store.item_ids(image_source=catalogue.source) if i not in listed and mine(i)]


def ingest_all(
    catalogue: Catalogue,
    journal: UploadJournal,
    encoder: ImageEncoder,
    store: VectorStore,
    report: ErrorReport,
    **options,
) -> IngestSummary:
    """The catalogue, then the items added over the API (`sync_uploads`), into one collection.

    An id that the API replaced (``PUT`` on a catalogue item) is the API's until it is deleted:
    the catalogue pass leaves it alone, so the two never overwrite each other run after run.
    """
    uploads = _uploads_of(journal, catalogue.shard)
    replaced = {item.id for item in uploads.items}
    own = dataclasses.replace(catalogue, items=[item for item in catalogue.items if item.id not in replaced])
    summary = ingest(own, encoder, store, report, **options)
    summary.add(sync_uploads(uploads, journal, encoder, store, report, **options))
    return summary


def seed_journal(journal: UploadJournal, store: VectorStore) -> None:
    """Once: copy the API-added items of the serving collection that predate the journal into it."""
    if not journal.complete:
        journal.seed(store.stored_items(UPLOAD) if store.collection_exists() else [])


def sync_uploads(
    uploads: Catalogue,
    journal: UploadJournal,
    encoder: ImageEncoder,
    store: VectorStore,
    report: ErrorReport,
    **options,
) -> IngestSummary:
    """Bring the collection's API-added items in line with the upload journal (re-embedding
    those it lacks or holds from another model). An upload whose image is missing fails its
    item in the report; its journal entry stays, so it is never silently lost."""
    prune = journal.complete and not uploads.errors  # an unreadable entry must not delete its item
    options = {**options, "prune": prune, "index_duplicates": True, "near_duplicates": None}
    return ingest(uploads, encoder, store, report, **options)


def _uploads_of(journal: UploadJournal, shard: Shard | None) -> Catalogue:
    uploads = journal.catalogue()
    return take_shard(uploads, shard) if shard else uploads


def reindex(
    catalogue: Catalogue,
    journal: UploadJournal,
    encoder: ImageEncoder,
    store: VectorStore,
    report: ErrorReport,
    *,
    drop_old: bool,
    filterable_fields: Sequence[str] = (),
    **options,
) -> IngestSummary:
    """Build this model's own collection from the catalogue and the API-added items, then switch
    the alias to it in one call.

    Nothing is reused from the old collection's vectors. Until the switch, searches keep reading
    the old collection; a reindex killed midway resumes into the half-built one on its next run.
    Writes that reach the API while the collection is rebuilt (``PUT``/``DELETE`` on a Qdrant
    server) land in the upload journal, which is replayed into the new collection after the
    switch. The old collection is dropped (``drop_old``) only when every API-added item made it.
    """
    if store.is_plain_collection() and not drop_old:
        raise store.plain_collection_error()  # before any work is done
    seed_journal(journal, store)  # from the serving collection, before anything replaces it
    target = store.for_model(encoder.identity)
    target.create_physical(encoder.dim, encoder.identity, filterable_fields)
    summary = ingest_all(catalogue, journal, encoder, target, report, **{**options, "prune": True})
    previous = store.switch_alias(target.collection, replace_plain=drop_old)
    replay = sync_uploads(_uploads_of(journal, catalogue.shard), journal, encoder, target, report, **options)
    summary.add(replay)
    log.info("api items replayed after the switch", extra={"ingested": replay.ingested, "failed": replay.failed})
    if drop_old and previous not in (None, target.collection):
        if replay.failed:
            log.warning(
                "old collection kept: some items added over the API could not be re-embedded (see the error report)",
                extra={"collection": previous, "failed": replay.failed},
            )
        else:
            store.drop(previous)
    return summary


def verify(
    catalogue: Catalogue,
    journal: UploadJournal,
    encoder: ImageEncoder,
    store: VectorStore,
    report: ErrorReport,
    *,
    filterable_fields: Sequence[str] = (),
    **options,
) -> IngestSummary:
    """Check every stored item and repair what is damaged; then bring the collection in line with
    the catalogue and the API-added items (which re-embeds whatever was missing or removed here).

    A point whose payload is unreadable or whose vectors are not finite unit vectors is deleted
    and embedded again from its image. A collection that cannot be read at all (lost files, lost
    points) is rebuilt from scratch under the same name.
    """
    started = time.perf_counter()
    try:
        if not store.collection_exists():
            store.ensure_collection(encoder.dim, encoder.identity, filterable_fields)
        store.check_model(encoder.dim, encoder.identity)
        unsound = list(store.unsound_points())
        for _, item_id, reason in unsound:
            report.damaged(item_id, reason)
        store.delete_points([point for point, _, _ in unsound])
        for item_id in _unlisted(catalogue, store):  # reported; --prune removes them
            report.stray(item_id)
    except StoreDamaged as e:
        report.damaged(None, e.message)
        _rebuild(store, journal, encoder, filterable_fields)
        unsound = None  # the whole collection
    summary = ingest_all(catalogue, journal, encoder, store, report, **options)
    summary.repaired = summary.ingested if unsound is None else len(unsound)
    summary.seconds = time.perf_counter() - started
    return summary


def _rebuild(store: VectorStore, journal: UploadJournal, encoder: ImageEncoder, fields: Sequence[str]) -> None:
    """Drop a collection that cannot be read and create it empty under the same name."""
    with contextlib.suppress(StoreError):  # API items of a readable payload go to the journal first
        seed_journal(journal, store)
    physical = store.physical_name()
    log.warning("rebuilding a damaged collection", extra={"collection": physical})
    store.drop(physical)
    store.bound_to(physical).create_physical(encoder.dim, encoder.identity, fields)
    if physical != store.collection:
        store.switch_alias(physical)
