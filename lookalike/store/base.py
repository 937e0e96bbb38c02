"""The store in domain terms: items, their looks, and searches over them; engine-neutral.

`VectorStore` says what the product asks of a vector store, once, over the shared query model
(`lookalike.queries`). Two engines implement its primitives: `lookalike.store.qdrant` (a Qdrant
server, or qdrant-client's local mode) and `lookalike.store.edge` (Qdrant Edge in-process). This
module knows nothing about torch or about either engine's types: vectors come in as numpy arrays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lookalike.colour import DIM as COLOUR_DIM
from lookalike.colour import recoloured
from lookalike.diversity import most_relevant_and_diverse
from lookalike.errors import DAMAGED_HINT, ItemNotFound, StoreDamaged, StoreError
from lookalike.looks import Look
from lookalike.points import CATEGORY, COLOUR, EMBEDDING, ITEM_ID, Hit, StoredItem, point_id
from lookalike.queries import (
    NearDuplicateRule,
    Query,
    Ranking,
    SearchFilter,
    SimilarQuery,
    Term,
    nearest,
    ranked,
)
from lookalike.settings import Settings
from lookalike.store.rollout import CollectionLifecycle

log = logging.getLogger(__name__)
SCROLL_PAGE = 1000
#: Stored cosine vectors are unit length (Qdrant normalises them on write).
UNIT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Record:
    """A stored point as an engine returns it (``vectors`` only when asked for)."""

    point_id: str
    payload: dict[str, Any]
    vectors: dict[str, Any] = field(default_factory=dict)
    score: float = 0.0

    def hit(self) -> Hit:
        return Hit(StoredItem.from_payload(self.payload), self.score)


class VectorStore(CollectionLifecycle):
    """Items and their looks in one collection (``collection``: the alias, or a physical name)."""

    def __init__(self, collection: str, *, embedded: bool) -> None:
        self.collection = collection
        self.embedded = embedded
        # Embedded engines run in this process over shared state: serialise calls from server threads.
        self._lock: contextlib.AbstractContextManager = threading.RLock() if embedded else contextlib.nullcontext()

    @classmethod
    def from_settings(cls, settings: Settings) -> VectorStore:
        """The store the settings name: a server at ``QDRANT_URL``, else the embedded engine."""
        if settings.qdrant_url:  # qdrant-client imported only here: 0.46 s and 42 MiB an API process
            from lookalike.store.qdrant import QdrantStore

            return QdrantStore.for_server(settings)
        from lookalike.store.embedded import open_embedded

        return open_embedded(settings.qdrant_path, settings.embedded_engine, settings.collection)

    # -- items ------------------------------------------------------------------------------------

    def upsert(self, items: Sequence[StoredItem], looks: Sequence[Look]) -> None:
        records = [
            Record(point_id(item.id), item.payload(), {EMBEDDING: look.embedding, COLOUR: look.colour})
            for item, look in zip(items, looks, strict=True)
        ]
        with self._call():
            self._upsert(records)

    def replace_payload(self, item: StoredItem) -> None:
        """Update what is known about an item without touching its vectors; `ItemNotFound` when
        it is not stored (deleted since it was read: a DELETE during an ingest run)."""
        with self._call():
            if not self._retrieve([point_id(item.id)], with_vectors=False):
                raise ItemNotFound(f"no item with id {item.id!r}")
            self._overwrite_payload(point_id(item.id), item.payload())

    def get(self, item_id: str) -> StoredItem:
        found = self.get_many([item_id])
        if item_id not in found:
            raise ItemNotFound(f"no item with id {item_id!r}")
        return found[item_id]

    def get_many(self, item_ids: Sequence[str]) -> dict[str, StoredItem]:
        """The stored items among ``item_ids`` (missing ones are simply absent)."""
        with self._call():
            records = self._retrieve([point_id(i) for i in item_ids], with_vectors=False)
        items = (StoredItem.from_payload(record.payload) for record in records)
        return {item.id: item for item in items}

    def item_ids(self, image_source: str | None = None) -> Iterator[str]:
        """Every item id in the collection (of one image source if given), page by page."""
        records = self._records(SearchFilter(image_source=image_source))
        yield from (record.payload[ITEM_ID] for record in records if ITEM_ID in record.payload)

    def stored_items(self, image_source: str) -> Iterator[StoredItem]:
        """Every item of one image source ("catalogue" or "upload"), page by page."""
        records = self._records(SearchFilter(image_source=image_source))
        yield from (StoredItem.from_payload(record.payload) for record in records if record.payload)

    def delete(self, item_ids: Sequence[str]) -> None:
        self.delete_points([point_id(i) for i in item_ids])

    def delete_points(self, point_ids: Sequence[str]) -> None:
        """Delete points by their own ids (also points whose payload no longer names an item)."""
        if point_ids:
            with self._call():
                self._delete(list(point_ids))

    def count(self) -> int:
        with self._call():
            return self._count()

    def categories(self) -> list[tuple[str, int]]:
        """Every category with its item count, most items first (a facet count)."""
        with self._call():
            return self._facet(CATEGORY, 10_000)

    def labelled_vectors(self, limit: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Up to ``limit`` items' embeddings, colours and categories (for calibration), in the
        store's order: by point id, a hash of the item id, so the first ``limit`` are a fair sample."""
        embeddings, colours, labels = [], [], []
        for record in self._records(SearchFilter(), with_vectors=True):
            if EMBEDDING in record.vectors and COLOUR in record.vectors and CATEGORY in record.payload:
                embeddings.append(record.vectors[EMBEDDING])
                colours.append(record.vectors[COLOUR])
                labels.append(str(record.payload[CATEGORY]))
                if len(labels) == limit:
                    break
        dim = len(embeddings[0]) if embeddings else 0
        as_rows = np.asarray(embeddings, dtype=np.float32).reshape(len(labels), dim)
        return as_rows, np.asarray(colours, dtype=np.float32).reshape(len(labels), COLOUR_DIM), labels

    def unsound_points(self) -> Iterator[tuple[str, str | None, str]]:
        """Every point whose payload or vectors are not what ingest writes: (point id, item id
        when readable, why). Raises `StoreDamaged` when the collection cannot be read at all."""
        for record in self._records(SearchFilter(), with_vectors=True):
            reason = _unsound(record)
            if reason is not None:
                yield record.point_id, record.payload.get(ITEM_ID), reason

    def _records(self, search_filter: SearchFilter, *, with_vectors: bool = False) -> Iterator[Record]:
        """Every point (inside the filter), a page of `SCROLL_PAGE` per engine call."""
        offset = None
        while True:
            with self._call():
                records, offset = self._scroll(search_filter, offset, SCROLL_PAGE, with_vectors)
            yield from records
            if offset is None:
                return

    # -- search -----------------------------------------------------------------------------------

    def similar(self, query: Look | str, search_filter: SearchFilter, ranking: Ranking) -> list[Hit]:
        """Nearest items to a photo's look, or to a stored item's (given its id).

        A stored item is never among its own results.
        """
        if isinstance(query, str):  # the one-entry batch: a clear 404 before any engine error
            (answer,) = self.similar_many([SimilarQuery(query, search_filter, ranking)])
            if isinstance(answer, ItemNotFound):
                raise answer
            return answer
        (hits,) = self.similar_looks([query], [search_filter], ranking)
        return hits

    def similar_looks(
        self, looks: Sequence[Look], filters: Sequence[SearchFilter], ranking: Ranking
    ) -> list[list[Hit]]:
        """Nearest items to each of several photos' looks (each with its own filter), in one engine
        batch: the regions of one uploaded photo."""
        searches = [
            ranked(search_filter, ranking, *nearest(look.embedding, self._colour_example(look, ranking, {})))
            for look, search_filter in zip(looks, filters, strict=True)
        ]
        return [_page(records, ranking) for records in self._search(searches)]

    def recommend(
        self,
        positive: Sequence[Look | str],
        negative: Sequence[Look | str],
        search_filter: SearchFilter,
        ranking: Ranking,
    ) -> list[Hit]:
        """More like the positive examples, less like the negative ones (Qdrant's recommend query,
        best-score strategy, on each vector). Examples are looks or stored item ids; ids are left out."""
        ids = [e for e in (*positive, *negative) if isinstance(e, str)]
        missing = sorted(set(ids) - set(self.get_many(ids)))
        if missing:
            raise ItemNotFound(f"no item with id {missing[0]!r}")

        def term(using: str) -> Term:
            def example(value: Look | str) -> Any:
                return value if isinstance(value, str) else (value.colour if using == COLOUR else value.embedding)

            return Term(using, tuple(map(example, positive)), tuple(map(example, negative)), recommend=True)

        stored = self._stored_colours([e for e in positive if isinstance(e, str)]) if ranking.colour_target else {}
        targeted = tuple(self._colour_example(e, ranking, stored) for e in positive)
        colour = dataclasses.replace(term(COLOUR), positive=targeted)
        (records,) = self._search([ranked(search_filter.excluding(ids), ranking, term(EMBEDDING), colour)])
        return _page(records, ranking)

    def similar_many(self, queries: Sequence[SimilarQuery]) -> list[list[Hit] | ItemNotFound]:
        """Look-alikes of several stored items in one batch; answers keep the order.

        An unknown id gets an `ItemNotFound` in its place instead of failing the others; an id
        deleted while the batch runs fails its own entry too: the batch is asked again without it.
        """
        try:
            return self._similar_many(queries)
        except ItemNotFound:
            return self._similar_many(queries)

    def _similar_many(self, queries: Sequence[SimilarQuery]) -> list[list[Hit] | ItemNotFound]:
        known = self.get_many([q.item_id for q in queries])
        asked = [q for q in queries if q.item_id in known]
        stored = self._stored_colours([q.item_id for q in asked if q.ranking.colour_target])  # one read for all
        searches = [
            ranked(
                q.search_filter.excluding([q.item_id]),
                q.ranking,
                *nearest(q.item_id, self._colour_example(q.item_id, q.ranking, stored)),
            )
            for q in asked
        ]
        answers = iter(self._search(searches))

        def answer(q: SimilarQuery) -> list[Hit] | ItemNotFound:
            if q.item_id not in known:
                return ItemNotFound(f"no item with id {q.item_id!r}")
            return _page(next(answers), q.ranking)

        return [answer(q) for q in queries]

    def look_alikes(self, looks: Sequence[Look], item_ids: Sequence[str], rule: NearDuplicateRule) -> list[Hit | None]:
        """For each look, the stored item (other than its own id) it nearly duplicates, or None.

        One batch: embedding candidates above the rule's threshold, rescored by colour with its own
        threshold; the hit's score is the colour similarity.
        """
        searches = [
            rule.query(look.embedding, look.colour, item_id) for look, item_id in zip(looks, item_ids, strict=True)
        ]
        return [records[0].hit() if records else None for records in self._search(searches)]

    def random_items(self, search_filter: SearchFilter, limit: int) -> list[StoredItem]:
        """A random sample of items, for browsing."""
        (records,) = self._search([Query((), search_filter, limit)])
        return [StoredItem.from_payload(record.payload) for record in records]

    def probe(self, *, thorough: bool = False) -> None:
        """Read the collection as a search does; `StoreDamaged` when it cannot answer.

        A config file that exists proves little: this reads one item (payload and vectors) and
        queries each vector with it. ``thorough`` makes those queries exact, touching every stored
        vector, so a truncated vector file shows at start-up rather than at the first search.
        """
        with self._call():
            records, _ = self._scroll(SearchFilter(), None, 1, True)
        if not records:
            return
        (record,) = records
        StoredItem.from_payload(record.payload)
        for name in (EMBEDDING, COLOUR):
            vector = record.vectors.get(name)
            if vector is None:
                raise StoreDamaged(f"a stored item has no {name} vector; {DAMAGED_HINT}")
            self._search([Query((Term(name, (np.asarray(vector),)),), SearchFilter(), 1, exact=thorough)])

    @staticmethod
    def _colour_example(example: Look | str, ranking: Ranking, stored: dict[str, np.ndarray]) -> Any:
        """The colour side of an example: its colour (an item's, by id), or with the ranking's colour
        target that colour hue-shifted to the target (an item's from ``stored``, `_stored_colours`)."""
        if ranking.colour_target is None:
            return example if isinstance(example, str) else example.colour
        colour = stored[example] if isinstance(example, str) else example.colour
        return recoloured(colour, ranking.colour_target)

    def _stored_colours(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored colour vectors of these items, in one read; `ItemNotFound` for a missing one."""
        if not item_ids:
            return {}
        with self._call():
            records = self._retrieve([point_id(i) for i in item_ids], with_vectors=True)
        stored = {r.payload.get(ITEM_ID): np.asarray(r.vectors[COLOUR], np.float32) for r in records}
        missing = sorted(set(item_ids) - set(stored))
        if missing:
            raise ItemNotFound(f"no item with id {missing[0]!r}")
        return stored

    def _search(self, queries: Sequence[Query]) -> list[list[Record]]:
        """Run queries (one engine batch where it can); an item named as an example but deleted
        meanwhile (a DELETE racing the search) is an `ItemNotFound` (404), not an engine error."""
        if not queries:
            return []
        ids = sorted({i for query in queries for i in query.example_ids()})
        try:
            with self._call():
                return self._query(list(queries))
        except StoreError as e:
            if isinstance(e, ItemNotFound) or not ids:
                raise
            missing = sorted(set(ids) - set(self.get_many(ids)))
            if missing:
                raise ItemNotFound(f"no item with id {missing[0]!r}") from e
            raise

    def _damaged(self, cause: Exception) -> StoreDamaged:
        """An engine that cannot read its own files: logged with the cause, a `StoreDamaged` to raise."""
        log.error("store damaged", extra={"collection": self.collection, "reason": str(cause)[:500]})
        return StoreDamaged(f"collection {self.collection!r} cannot be read (a storage error, logged); {DAMAGED_HINT}")

    # -- engine upkeep (no-ops where the engine does it itself) ------------------------------------

    def flush(self) -> None:
        """Have the engine write what it holds to disk."""

    @contextlib.contextmanager
    def writing_behind(self, sync_every_s: float) -> Iterator[VectorStore]:
        """This store for a bulk load that a rerun redoes (ingest): an engine that syncs every write
        to disk syncs its writes every ``sync_every_s`` and when the block ends instead."""
        yield self

    def optimize(self) -> None:
        """Build search indexes after a bulk load, where the engine wants it done explicitly."""

    @abstractmethod
    def close(self) -> None: ...

    # -- what each engine supplies -----------------------------------------------------------------

    @abstractmethod
    def _upsert(self, records: list[Record]) -> None: ...

    @abstractmethod
    def _overwrite_payload(self, point: str, payload: dict[str, Any]) -> None: ...

    @abstractmethod
    def _retrieve(self, points: list[str], *, with_vectors: bool) -> list[Record]: ...

    @abstractmethod
    def _scroll(
        self, search_filter: SearchFilter, offset: Any, limit: int, with_vectors: bool
    ) -> tuple[list[Record], Any]:
        """One page of points inside the filter, by point id; the offset of the next page or None."""

    @abstractmethod
    def _delete(self, points: list[str]) -> None: ...

    @abstractmethod
    def _count(self) -> int: ...

    @abstractmethod
    def _facet(self, key: str, limit: int) -> list[tuple[str, int]]: ...

    @abstractmethod
    def _query(self, queries: list[Query]) -> list[list[Record]]:
        """Each query's records with scores, in order; an engine error is a `StoreError`."""


def _page(records: list[Record], ranking: Ranking) -> list[Hit]:
    """The page the ranking asks for: as the engine ranked it, or re-ranked for diversity first."""
    if ranking.diversity > 0:
        wanted = ranking.offset + ranking.limit
        order = most_relevant_and_diverse(records, wanted, ranking.diversity, ranking.colour_weight)
        records = [records[i] for i in order][ranking.offset :]
    return [record.hit() for record in records]


def _unsound(record: Record) -> str | None:
    """Why a stored point is not as ingest wrote it, or None when it is."""
    try:
        StoredItem.from_payload(record.payload)
    except StoreDamaged:
        return "payload unreadable"
    for name in (EMBEDDING, COLOUR):
        values = record.vectors.get(name)
        if values is None:
            return f"no {name} vector"
        vector = np.asarray(values, dtype=np.float32)
        if not np.isfinite(vector).all():
            return f"{name} vector is not finite"
        if abs(float(np.linalg.norm(vector)) - 1.0) > UNIT_TOLERANCE:
            return f"{name} vector is not unit length"
    return None
