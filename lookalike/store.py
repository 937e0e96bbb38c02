"""The Qdrant store: one class owns the client and speaks domain types (items, hits, filters).

The same code runs against a Qdrant server (``QDRANT_URL``) and an embedded store at
``QDRANT_PATH`` (Qdrant Edge, or qdrant-client's local mode). Points are laid out by
`lookalike.points`, requests built by `lookalike.queries`. This module knows nothing about torch:
embeddings come in as numpy arrays.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from lookalike.colour import DIM as COLOUR_DIM
from lookalike.errors import (
    DAMAGED_HINT,
    ItemNotFound,
    ModelMismatch,
    StoreDamaged,
    StoreError,
    StoreLocked,
    StoreUnavailable,
)
from lookalike.lockfile import LOCK_FILE, StoreLockBusy, describe_holder, register_lock_path
from lookalike.looks import Look
from lookalike.points import (
    CATEGORY,
    COLOUR,
    EMBEDDING,
    IMAGE_SOURCE,
    ITEM_ID,
    LAYOUT,
    METADATA,
    MODEL,
    PRODUCT_ID,
    Hit,
    StoredItem,
    hit_of,
    point_id,
)
from lookalike.queries import NearDuplicateRule, Ranking, SearchFilter, SimilarQuery, scoring_arguments, vector_of
from lookalike.settings import Settings

log = logging.getLogger(__name__)

SCROLL_PAGE = 1000


@dataclass(frozen=True)
class CollectionLayout:
    """How a new collection is laid out on a Qdrant server (embedded mode ignores all of it)."""

    shard_number: int | None = None
    replication_factor: int | None = None
    write_consistency_factor: int | None = None
    quantize_int8: bool = False

    def create_arguments(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "shard_number": self.shard_number,
            "replication_factor": self.replication_factor,
            "write_consistency_factor": self.write_consistency_factor,
        }
        if self.quantize_int8:
            arguments["quantization_config"] = models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99, always_ram=True)
            )
        return arguments


class VectorStore:
    """Items and their embeddings in one Qdrant collection."""

    def __init__(
        self, client: QdrantClient, collection: str, *, embedded: bool, layout: CollectionLayout | None = None
    ) -> None:
        self.client = client
        self.collection = collection
        self.embedded = embedded
        self.layout = layout or CollectionLayout()
        # Embedded mode is plain Python over shared arrays: serialise calls from server threads.
        self._lock = threading.RLock() if embedded else contextlib.nullcontext()

    @classmethod
    def from_settings(cls, settings: Settings) -> VectorStore:
        if settings.qdrant_url:
            api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
            client = QdrantClient(url=settings.qdrant_url, api_key=api_key, timeout=settings.qdrant_timeout_s)
            layout = CollectionLayout(
                settings.qdrant_shard_number,
                settings.qdrant_replication_factor,
                settings.qdrant_write_consistency_factor,
                settings.qdrant_quantize_int8,
            )
            return cls(client, settings.collection, embedded=False, layout=layout)
        return cls(open_embedded(settings.qdrant_path, settings.embedded_engine), settings.collection, embedded=True)

    # -- collection ------------------------------------------------------------------------

    def collection_exists(self) -> bool:
        return self.resolve() is not None

    def resolve(self) -> str | None:
        """The collection behind this store's name: the alias target, the name itself, or None."""
        with self._call():
            for alias in self.client.get_aliases().aliases:
                if alias.alias_name == self.collection:
                    return alias.collection_name
            return self.collection if self.client.collection_exists(self.collection) else None

    def ensure_collection(self, dim: int, model: str, filterable_fields: Sequence[str] = ()) -> None:
        """Create the collection for this model (behind an alias), or check the existing one matches."""
        if self.collection_exists():
            self.check_model(dim, model)
            return
        target = self.for_model(model)
        target.create_physical(dim, model, filterable_fields)
        self.switch_alias(target.collection)

    def for_model(self, model: str) -> VectorStore:
        """The store of this model's own collection, ``<name>__<model>__<layout>``."""
        slug = re.sub(r"[^A-Za-z0-9_-]+", "_", model).strip("_")[:120]
        return self.bound_to(f"{self.collection}__{slug}__{LAYOUT}")

    def bound_to(self, collection: str) -> VectorStore:
        """The same client (and lock) on another collection name."""
        twin = VectorStore(self.client, collection, embedded=self.embedded, layout=self.layout)
        twin._lock = self._lock
        return twin

    def create_physical(self, dim: int, model: str, filterable_fields: Sequence[str] = ()) -> None:
        """Create this store's collection unless it exists (a reindex killed midway resumes into it)."""
        with self._call():
            if self.client.collection_exists(self.collection):
                self.check_model(dim, model)
                return
            on_disk = self.layout.quantize_int8 and not self.embedded  # originals on disk, int8 in RAM
            self.client.create_collection(
                self.collection,
                vectors_config={
                    name: models.VectorParams(size=size, distance=models.Distance.COSINE, on_disk=on_disk or None)
                    for name, size in ((EMBEDDING, dim), (COLOUR, COLOUR_DIM))
                },
                metadata={MODEL: model, "dim": dim, "layout": LAYOUT},
                **({} if self.embedded else self.layout.create_arguments()),
            )
            # qdrant-client's local mode scans everything and ignores payload indexes; Edge uses them.
            if not self.embedded or getattr(self.client, "indexes_payload", False):
                for key in (CATEGORY, ITEM_ID, PRODUCT_ID, *(f"{METADATA}.{name}" for name in filterable_fields)):
                    self.client.create_payload_index(self.collection, key, models.PayloadSchemaType.KEYWORD)
        log.info("collection created", extra={"collection": self.collection, "model": model, "dim": dim})

    def plain_collection_error(self) -> StoreError:
        return StoreError(
            f"{self.collection!r} is a plain collection, not an alias: run the reindex with --drop-old "
            "to replace it (searches fail for a moment), or choose another COLLECTION name"
        )

    def is_plain_collection(self) -> bool:
        """True when this store's name is a collection itself, not an alias (older layouts)."""
        return self.resolve() == self.collection

    def switch_alias(self, target: str, *, replace_plain: bool = False) -> str | None:
        """Point this store's name at ``target`` in one Qdrant call; returns the previous target.

        A plain collection under the name (made before collections had aliases) is only replaced
        with ``replace_plain``: it is deleted first, so the name is missing for a moment.
        """
        previous = self.resolve()
        operations: list[models.AliasOperations] = []
        if previous == self.collection:
            if not replace_plain:
                raise self.plain_collection_error()
            log.warning("replacing a plain collection by an alias", extra={"collection": self.collection})
            self.drop(self.collection)
        elif previous is not None:
            operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self.collection)))
        operations.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=target, alias_name=self.collection)
            )
        )
        with self._call():
            self.client.update_collection_aliases(change_aliases_operations=operations)
        log.info("alias switched", extra={"alias": self.collection, "to": target, "from": previous})
        return None if previous == self.collection else previous

    def drop(self, collection: str) -> None:
        with self._call():
            self.client.delete_collection(collection)
        log.info("collection dropped", extra={"collection": collection})

    def check_model(self, dim: int, model: str) -> None:
        """Raise `ModelMismatch` unless the collection holds embeddings of exactly this model."""
        with self._call():
            info = self.client.get_collection(self.collection)
        stored_model = (info.config.metadata or {}).get(MODEL)
        vectors = info.config.params.vectors
        stored_dim = vectors[EMBEDDING].size if isinstance(vectors, dict) and EMBEDDING in vectors else None
        if stored_model != model or stored_dim != dim:
            raise ModelMismatch(
                f"collection {self.collection!r} holds embeddings of model {stored_model} (dim {stored_dim}); "
                f"this process loaded {model} (dim {dim}). Set MODEL_NAME/MODEL_PRETRAINED/MODEL_CHECKPOINT "
                "back to that model, or build the new model's collection with `python -m ingest --reindex`"
            )
        if not isinstance(vectors, dict) or COLOUR not in vectors:
            raise ModelMismatch(
                f"collection {self.collection!r} was built before items had colour vectors; rebuild it with "
                "`python -m ingest --reindex --drop-old` (searches keep working until the switch)"
            )

    def probe(self, *, thorough: bool = False) -> None:
        """Read the collection as a search does; `StoreDamaged` when it cannot answer.

        A config file that exists proves little: this reads one item (payload and vectors) and
        queries each vector with it. ``thorough`` makes those queries exact, touching every stored
        vector, so a truncated vector file shows at start-up rather than at the first search.
        """
        with self._call():
            records, _ = self.client.scroll(self.collection, limit=1, with_payload=True, with_vectors=True)
        if not records:
            return
        record = records[0]
        StoredItem.from_payload(record.payload or {})
        params = models.SearchParams(exact=True) if thorough else None
        for name in (EMBEDDING, COLOUR):
            vector = (record.vector or {}).get(name)
            if vector is None:
                raise StoreDamaged(f"a stored item has no {name} vector; {DAMAGED_HINT}")
            with self._call():
                self.client.query_points(
                    self.collection, query=list(vector), using=name, limit=1, with_payload=True, search_params=params
                )

    def unsound_points(self) -> Iterator[tuple[str, str | None, str]]:
        """Every point whose payload or vectors are not what ingest writes: (point id, item id
        when readable, why). Raises `StoreDamaged` when the collection cannot be read at all."""
        for record in self._records(with_payload=True, with_vectors=True):
            reason = _unsound(record)
            if reason is not None:
                yield str(record.id), (record.payload or {}).get(ITEM_ID), reason

    def labelled_vectors(self, limit: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Up to ``limit`` items' embeddings, colours and categories (for calibration), in the
        store's order: by point id, a hash of the item id, so the first ``limit`` are a fair sample."""
        embeddings, colours, labels = [], [], []
        for record in self._records(with_payload=[CATEGORY], with_vectors=True):
            vectors, payload = record.vector or {}, record.payload or {}
            if EMBEDDING in vectors and COLOUR in vectors and CATEGORY in payload:
                embeddings.append(vectors[EMBEDDING])
                colours.append(vectors[COLOUR])
                labels.append(str(payload[CATEGORY]))
                if len(labels) == limit:
                    break
        dim = len(embeddings[0]) if embeddings else 0
        as_rows = np.asarray(embeddings, dtype=np.float32).reshape(len(labels), dim)
        return as_rows, np.asarray(colours, dtype=np.float32).reshape(len(labels), COLOUR_DIM), labels

    def metadata(self) -> dict[str, Any]:
        """The collection's metadata (model, layout, calibration)."""
        with self._call():
            return dict(self.client.get_collection(self.collection).config.metadata or {})

    def update_metadata(self, metadata: dict[str, Any]) -> None:
        """Merge ``metadata`` into the collection's (Qdrant's collection metadata)."""
        with self._call():
            self.client.update_collection(self.physical_name(), metadata=metadata)

    def delete_points(self, point_ids: Sequence[str]) -> None:
        """Delete points by their own ids (for points whose payload no longer names an item)."""
        if point_ids:
            with self._call():
                self.client.delete(self.collection, models.PointIdsList(points=list(point_ids)), wait=True)

    def physical_name(self) -> str:
        """The collection behind this store's name, without reading it (it may be damaged)."""
        with self._call():
            for alias in self.client.get_aliases().aliases:
                if alias.alias_name == self.collection:
                    return alias.collection_name
        return self.collection

    def flush(self) -> None:
        """Have the engine write what it holds to disk (embedded Edge; the others write through)."""
        flush = getattr(self.client, "flush", None)
        if flush is not None:
            with self._call():
                flush()

    def count(self) -> int:
        with self._call():
            return self.client.count(self.collection, exact=True).count

    # -- items -----------------------------------------------------------------------------

    def upsert(self, items: Sequence[StoredItem], looks: Sequence[Look]) -> None:
        points = [
            models.PointStruct(
                id=point_id(item.id),
                vector={EMBEDDING: look.embedding.tolist(), COLOUR: look.colour.tolist()},
                payload=item.payload(),
            )
            for item, look in zip(items, looks, strict=True)
        ]
        with self._call():
            self.client.upsert(self.collection, points=points, wait=True)

    def replace_payload(self, item: StoredItem) -> None:
        """Update what is known about an item without touching its embedding."""
        with self._call():
            self.client.overwrite_payload(self.collection, item.payload(), points=[point_id(item.id)], wait=True)

    def get(self, item_id: str) -> StoredItem:
        found = self.get_many([item_id])
        if item_id not in found:
            raise ItemNotFound(f"no item with id {item_id!r}")
        return found[item_id]

    def get_many(self, item_ids: Sequence[str]) -> dict[str, StoredItem]:
        """The stored items among ``item_ids`` (missing ones are simply absent)."""
        with self._call():
            records = self.client.retrieve(
                self.collection, [point_id(i) for i in item_ids], with_payload=True, with_vectors=False
            )
        items = (StoredItem.from_payload(record.payload or {}) for record in records)
        return {item.id: item for item in items}

    def item_ids(self, image_source: str | None = None) -> Iterator[str]:
        """Every item id in the collection (of one image source if given), page by page."""
        records = self._records(_source_filter(image_source), with_payload=[ITEM_ID])
        yield from (record.payload[ITEM_ID] for record in records if record.payload)

    def stored_items(self, image_source: str) -> Iterator[StoredItem]:
        """Every item of one image source ("catalogue" or "upload"), page by page."""
        records = self._records(_source_filter(image_source), with_payload=True)
        yield from (StoredItem.from_payload(record.payload) for record in records if record.payload)

    def _records(
        self, scroll_filter: models.Filter | None = None, *, with_payload: Any = True, with_vectors: bool = False
    ) -> Iterator[Any]:
        """Every point (matching the filter), a page of `SCROLL_PAGE` per Qdrant call."""
        offset = None
        while True:
            with self._call():
                records, offset = self.client.scroll(
                    self.collection,
                    scroll_filter=scroll_filter,
                    limit=SCROLL_PAGE,
                    offset=offset,
                    with_payload=with_payload,
                    with_vectors=with_vectors,
                )
            yield from records
            if offset is None:
                return

    def delete(self, item_ids: Sequence[str]) -> None:
        if not item_ids:
            return
        with self._call():
            self.client.delete(self.collection, models.PointIdsList(points=[point_id(i) for i in item_ids]), wait=True)

    # -- search ----------------------------------------------------------------------------

    def similar(self, query: Look | str, search_filter: SearchFilter, ranking: Ranking) -> list[Hit]:
        """Nearest items to a photo's look, or to a stored item's (given its id).

        A stored item is never among its own results.
        """
        if isinstance(query, str):
            self.get(query)  # a clear 404 rather than Qdrant's error text
            scoring = scoring_arguments(point_id(query), point_id(query), ranking)
            with self._examples_exist([query]):
                return self._ranked(scoring, search_filter.to_qdrant(also_exclude=[query]), ranking)
        scoring = scoring_arguments(vector_of(query.embedding), vector_of(query.colour), ranking)
        return self._ranked(scoring, search_filter.to_qdrant(), ranking)

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

        def recommend_by(vector: str) -> models.RecommendQuery:
            def example(value: Look | str) -> Any:
                if isinstance(value, str):
                    return point_id(value)
                return vector_of(value.colour if vector == COLOUR else value.embedding)

            return models.RecommendQuery(
                recommend=models.RecommendInput(
                    positive=[example(e) for e in positive],
                    negative=[example(e) for e in negative],
                    strategy=models.RecommendStrategy.BEST_SCORE,
                )
            )

        scoring = scoring_arguments(recommend_by(EMBEDDING), recommend_by(COLOUR), ranking)
        with self._examples_exist(ids):
            return self._ranked(scoring, search_filter.to_qdrant(also_exclude=ids), ranking)

    def similar_many(self, queries: Sequence[SimilarQuery]) -> list[list[Hit] | ItemNotFound]:
        """Look-alikes of several stored items in one Qdrant batch query; answers keep the order.

        An unknown id gets an `ItemNotFound` in its place instead of failing the others. Entries
        that group by product are asked one by one (Qdrant has no batch of grouped queries). An id
        deleted while the batch runs fails its own entry too: the batch is asked again without it.
        """
        try:
            return self._similar_many(queries)
        except ItemNotFound:
            return self._similar_many(queries)

    def _similar_many(self, queries: Sequence[SimilarQuery]) -> list[list[Hit] | ItemNotFound]:
        known = self.get_many([q.item_id for q in queries])
        flat = [q for q in queries if q.item_id in known and not q.ranking.one_per_product]
        requests = [
            models.QueryRequest(
                **scoring_arguments(point_id(q.item_id), point_id(q.item_id), q.ranking),
                filter=q.search_filter.to_qdrant(also_exclude=[q.item_id]),
                limit=q.ranking.limit,
                offset=q.ranking.offset,
                score_threshold=q.ranking.score_threshold,
                with_payload=True,
            )
            for q in flat
        ]
        with self._examples_exist([q.item_id for q in flat]), self._call():
            responses = iter(self.client.query_batch_points(self.collection, requests) if requests else [])

        def answer(q: SimilarQuery) -> list[Hit] | ItemNotFound:
            if q.item_id not in known:
                return ItemNotFound(f"no item with id {q.item_id!r}")
            if q.ranking.one_per_product:
                return self.similar(q.item_id, q.search_filter, q.ranking)
            return [hit_of(p) for p in next(responses).points]

        return [answer(q) for q in queries]

    def look_alikes(self, looks: Sequence[Look], item_ids: Sequence[str], rule: NearDuplicateRule) -> list[Hit | None]:
        """For each look, the stored item (other than its own id) it nearly duplicates, or None.

        One batch query: embedding candidates above the rule's threshold, rescored by colour with
        its own threshold; the hit's score is the colour similarity.
        """
        requests = [
            models.QueryRequest(
                prefetch=[
                    models.Prefetch(
                        query=vector_of(look.embedding), using=EMBEDDING, limit=8, score_threshold=rule.min_similarity
                    )
                ],
                query=vector_of(look.colour),
                using=COLOUR,
                score_threshold=rule.min_colour_similarity,
                filter=SearchFilter(exclude=[item_id]).to_qdrant(),
                limit=1,
                with_payload=True,
            )
            for look, item_id in zip(looks, item_ids, strict=True)
        ]
        with self._call():
            responses = self.client.query_batch_points(self.collection, requests) if requests else []
        return [hit_of(response.points[0]) if response.points else None for response in responses]

    def _ranked(self, scoring: dict[str, Any], query_filter: models.Filter | None, ranking: Ranking) -> list[Hit]:
        """Run one scored query, flat or one hit per product."""
        arguments = {**scoring, "query_filter": query_filter, "score_threshold": ranking.score_threshold}
        with self._call():
            if not ranking.one_per_product:
                response = self.client.query_points(
                    self.collection, limit=ranking.limit, offset=ranking.offset, with_payload=True, **arguments
                )
                return [hit_of(p) for p in response.points]
            groups = self.client.query_points_groups(
                self.collection,
                group_by=PRODUCT_ID,
                group_size=1,
                limit=ranking.offset + ranking.limit,  # grouped queries have no offset: page here
                with_payload=True,
                **arguments,
            ).groups
        return [hit_of(group.hits[0]) for group in groups[ranking.offset :]]

    def categories(self) -> list[tuple[str, int]]:
        """Every category with its item count, most items first (Qdrant's facet count)."""
        with self._call():
            response = self.client.facet(self.collection, key=CATEGORY, limit=10_000, exact=True)
        return [(str(hit.value), hit.count) for hit in response.hits]

    def random_items(self, search_filter: SearchFilter, limit: int) -> list[StoredItem]:
        """A random sample of items (Qdrant's sample query), for browsing."""
        with self._call():
            response = self.client.query_points(
                self.collection,
                query=models.SampleQuery(sample=models.Sample.RANDOM),
                query_filter=search_filter.to_qdrant(),
                limit=limit,
                with_payload=True,
            )
        return [StoredItem.from_payload(point.payload or {}) for point in response.points]

    def optimize(self) -> None:
        """Build search indexes after a bulk load, where the engine wants it done explicitly (Edge)."""
        optimize = getattr(self.client, "optimize", None)
        if optimize is not None:
            with self._call():
                optimize(self.collection)

    def close(self) -> None:
        with self._call():
            self.client.close()

    @contextlib.contextmanager
    def _examples_exist(self, item_ids: Sequence[str]) -> Iterator[None]:
        """Around a query that names stored items by id: when it fails because one of them was
        deleted meanwhile (a DELETE racing the search), say so as `ItemNotFound` (404)."""
        try:
            yield
        except (KeyError, ValueError, StoreError) as e:
            if isinstance(e, ItemNotFound) or not item_ids:
                raise
            missing = sorted(set(item_ids) - set(self.get_many(item_ids)))
            if missing:
                raise ItemNotFound(f"no item with id {missing[0]!r}") from e
            raise

    @contextlib.contextmanager
    def _call(self) -> Iterator[None]:
        """Serialise embedded-mode calls; turn transport failures into `StoreUnavailable`."""
        try:
            with self._lock:
                yield
        except (ResponseHandlingException, httpx.TransportError, ConnectionError) as e:
            log.warning("qdrant unreachable", extra={"collection": self.collection, "reason": str(e)})
            raise StoreUnavailable("the vector store (Qdrant) is unreachable; retry later") from e
        except UnexpectedResponse as e:
            if e.status_code == 404:
                raise self._missing_collection() from e
            if e.status_code in (502, 503, 504):
                raise StoreUnavailable(f"Qdrant answered {e.status_code}") from e
            raise
        except ValueError as e:  # embedded mode's way of saying "no such collection"
            if "not found" not in str(e).lower():
                raise
            raise self._missing_collection() from e
        except (sqlite3.DatabaseError, pickle.UnpicklingError, EOFError) as e:  # local mode's storage
            raise self._damaged(e) from e
        except Exception as e:
            # qdrant-edge reports engine failures (a segment that cannot be read) as a bare Exception.
            if type(e) is not Exception or not self.embedded:
                raise
            raise self._damaged(e) from e

    def _damaged(self, cause: BaseException) -> StoreDamaged:
        """The engine could not read its files; the detail (file paths) goes to the log only."""
        log.error("store damaged", extra={"collection": self.collection, "reason": str(cause)[:500]})
        return StoreDamaged(f"collection {self.collection!r} cannot be read (a storage error, logged); {DAMAGED_HINT}")

    def _missing_collection(self) -> StoreUnavailable:
        return StoreUnavailable(
            f"collection {self.collection!r} does not exist yet: run `python -m ingest` "
            "(or add items with PUT /v1/items/<id>)"
        )


def _source_filter(image_source: str | None) -> models.Filter | None:
    if image_source is None:
        return None
    return models.Filter(must=[models.FieldCondition(key=IMAGE_SOURCE, match=models.MatchValue(value=image_source))])


def _unsound(record: Any) -> str | None:
    """Why a stored point is not as ingest wrote it, or None when it is."""
    try:
        StoredItem.from_payload(record.payload or {})
    except StoreDamaged:
        return "payload unreadable"
    for name in (EMBEDDING, COLOUR):
        values = (record.vector or {}).get(name)
        if values is None:
            return f"no {name} vector"
        vector = np.asarray(values, dtype=np.float32)
        if not np.isfinite(vector).all():
            return f"{name} vector is not finite"
        if abs(float(np.linalg.norm(vector)) - 1.0) > UNIT_TOLERANCE:
            return f"{name} vector is not unit length"
    return None


#: Stored cosine vectors are unit length (Qdrant normalises them on write).
UNIT_TOLERANCE = 1e-3

#: A file or folder that only one engine writes at the top of QDRANT_PATH.
ENGINE_MARKERS = {"qdrant-client": "meta.json", "edge": "collections"}


def open_embedded(path: Path, engine: str = "edge") -> QdrantClient:
    """Open the embedded store, failing fast when another process holds the directory or when
    it was written by the other engine (its data would look like an empty store)."""
    path.mkdir(parents=True, exist_ok=True)
    for other, marker in ENGINE_MARKERS.items():
        if other != engine and (path / marker).exists():
            raise StoreError(
                f"the embedded store at {path} was written by EMBEDDED_ENGINE={other}, not {engine}: set "
                f"EMBEDDED_ENGINE={other}, or point QDRANT_PATH at a new folder and run `python -m ingest`"
            )
    register_lock_path(path / LOCK_FILE)  # forked children (decode workers) never keep it
    try:
        if engine == "edge":
            from lookalike.edge import EdgeClient

            return EdgeClient(path)  # type: ignore[return-value]  (the subset of QdrantClient we use)
        return QdrantClient(path=str(path), force_disable_check_same_thread=True)
    except StoreLockBusy as e:
        raise _store_locked(path, e.holder) from e
    except RuntimeError as e:  # qdrant-client's local mode
        if "already accessed" not in str(e):
            raise
        raise _store_locked(path, describe_holder(path / LOCK_FILE)) from e


def _store_locked(path: Path, holder: str) -> StoreLocked:
    return StoreLocked(
        f"the embedded Qdrant store at {path} is in use by another process ({holder}); embedded mode "
        "allows one process per directory (the API service or an ingest run). Stop that process first, add "
        "items through the running API (PUT /v1/items/<id>), or run a Qdrant server and set QDRANT_URL"
    )
