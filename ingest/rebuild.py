"""Rebuilding a collection: `reindex` builds the current model's own collection and switches the
alias to it; `verify` checks every stored item and repairs what is damaged. Both then bring it in
line with the catalogue and the API-added items through the ingest pass (`ingest.pipeline`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence

from ingest.pipeline import IngestOptions, ingest_all, seed_journal, sync_uploads, uploads_of
from ingest.removal import refuse_to_leave_out, unlisted
from ingest.report import ErrorReport, IngestSummary
from lookalike.catalogue import Catalogue, Shard
from lookalike.errors import StoreDamaged, StoreError
from lookalike.journal import UploadJournal
from lookalike.runtime import Encoder
from lookalike.store import VectorStore

log = logging.getLogger(__name__)


def reindex(
    catalogue: Catalogue,
    journal: UploadJournal,
    encoder: Encoder,
    store: VectorStore,
    report: ErrorReport,
    options: IngestOptions = IngestOptions(),
    *,
    drop_old: bool,
) -> IngestSummary:
    """Build this model's own collection from the catalogue and the API-added items, then switch
    the alias to it in one call.

    Nothing is reused from the old collection's vectors. Until the switch, searches keep reading
    the old collection; a reindex killed midway resumes into the half-built one on its next run.
    Writes that reach the API while the collection is rebuilt (``PUT``/``DELETE`` on a Qdrant
    server) land in the upload journal, which is replayed into the new collection after the
    switch. The old collection is dropped (``drop_old``) only when every API-added item made it.
    Run in ``--shard`` workers, the last slice to be built switches; the switch is refused while
    the new collection lacks more of the serving one's catalogue items than ``max_prune`` allows.
    """
    if store.is_plain_collection() and not drop_old:
        raise store.plain_collection_error()  # before any work is done
    seed_journal(journal, store)  # from the serving collection, before anything replaces it
    target = store.for_model(encoder.identity)
    target.create_physical(encoder.dim, encoder.identity, options.filterable_fields)
    summary = ingest_all(catalogue, journal, encoder, target, report, dataclasses.replace(options, prune=True))
    if not _every_slice_built(target, catalogue.shard):
        log.info("reindex slice built: the last slice to finish switches the alias", extra={"into": target.collection})
        return summary
    refuse_to_leave_out(store, target, catalogue, options.max_prune)
    previous = store.switch_alias(target.collection, replace_plain=drop_old)
    _forget_slices(target, catalogue.shard)
    everyones = uploads_of(journal, None)  # with --shard this is the last slice: replay every slice's
    replay = sync_uploads(everyones, journal, encoder, target, report, options)
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


def _every_slice_built(target: VectorStore, shard: Shard | None) -> bool:
    """Whether every slice of a reindex run in ``--shard`` workers is in ``target`` (recorded in
    its metadata, one key a slice): the alias must not name a collection that holds one slice."""
    if shard is None:
        return True
    target.update_metadata({_slice_key(shard.index, shard.count): True})
    built = target.metadata()
    return all(built.get(_slice_key(index, shard.count)) for index in range(shard.count))


def _forget_slices(target: VectorStore, shard: Shard | None) -> None:
    """After the switch: a later sharded reindex into this collection counts its slices afresh."""
    if shard is not None:
        target.update_metadata({_slice_key(index, shard.count): None for index in range(shard.count)})


def _slice_key(index: int, count: int) -> str:
    return f"reindex_slice_{index}_of_{count}"


def verify(
    catalogue: Catalogue,
    journal: UploadJournal,
    encoder: Encoder,
    store: VectorStore,
    report: ErrorReport,
    options: IngestOptions = IngestOptions(),
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
            store.ensure_collection(encoder.dim, encoder.identity, options.filterable_fields)
        store.check_model(encoder.dim, encoder.identity)
        unsound = list(store.unsound_points())
        for _, item_id, reason in unsound:
            report.damaged(item_id, reason)
        store.delete_points([point for point, _, _ in unsound])
        stored_ids = store.item_ids(image_source=catalogue.source)
        for item_id in unlisted(catalogue, stored_ids):  # reported; --prune removes them
            report.stray(item_id)
    except StoreDamaged as e:
        report.damaged(None, e.message)
        _rebuild(store, journal, encoder, options.filterable_fields)
        unsound = None  # the whole collection
    summary = ingest_all(catalogue, journal, encoder, store, report, options)
    summary.repaired = summary.ingested if unsound is None else len(unsound)
    summary.seconds = time.perf_counter() - started
    return summary


def _rebuild(store: VectorStore, journal: UploadJournal, encoder: Encoder, fields: Sequence[str]) -> None:
    """Drop a collection that cannot be read and create it empty under the same name."""
    with contextlib.suppress(StoreError):  # API items of a readable payload go to the journal first
        seed_journal(journal, store)
    physical = store.physical_name()
    log.warning("rebuilding a damaged collection", extra={"collection": physical})
    store.drop(physical)
    store.bound_to(physical).create_physical(encoder.dim, encoder.identity, fields)
    if physical != store.collection:
        store.switch_alias(physical)
