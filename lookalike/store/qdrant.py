"""The store on qdrant-client: a Qdrant server (``QDRANT_URL``), or qdrant-client's local mode.

Local mode shares the server's client API, which keeps the server's code path under test without
a server. Queries (`lookalike.queries`) become qdrant-client's typed models here and nowhere else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pickle
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from lookalike.errors import DiskFull, StoreError, StoreUnavailable
from lookalike.points import CATEGORY, IMAGE_SOURCE, PRODUCT_ID, SHA256, point_id
from lookalike.queries import Example, Query, SearchFilter, Term, formula_defaults, formula_terms, metadata_matches
from lookalike.settings import Settings
from lookalike.store.base import Record, VectorStore
from lookalike.store.rollout import CollectionInfo

log = logging.getLogger(__name__)
INDEX_KINDS = {"keyword": models.PayloadSchemaType.KEYWORD, "number": models.PayloadSchemaType.FLOAT}
KIND_NAMES = {schema_type: kind for kind, schema_type in INDEX_KINDS.items()}


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


class QdrantStore(VectorStore):
    """`VectorStore` over a ``QdrantClient``: a server, or local mode (``embedded``)."""

    def __init__(
        self, client: QdrantClient, collection: str, *, embedded: bool, layout: CollectionLayout | None = None
    ) -> None:
        super().__init__(collection, embedded=embedded)
        self.client = client
        self.layout = layout or CollectionLayout()

    @classmethod
    def for_server(cls, settings: Settings) -> QdrantStore:
        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        client = QdrantClient(url=settings.qdrant_url, api_key=api_key, timeout=settings.qdrant_timeout_s)
        layout = CollectionLayout(
            settings.qdrant_shard_number,
            settings.qdrant_replication_factor,
            settings.qdrant_write_consistency_factor,
            settings.qdrant_quantize_int8,
        )
        return cls(client, settings.collection, embedded=False, layout=layout)

    @classmethod
    def local(cls, path: Path, collection: str) -> QdrantStore:
        """qdrant-client's local mode on a folder (RuntimeError when another process holds it)."""
        return cls(QdrantClient(path=str(path), force_disable_check_same_thread=True), collection, embedded=True)

    def snapshot(self) -> str:
        """A server-side snapshot of the collection (Qdrant's snapshot API); returns its name."""
        with self._call():
            return self.client.create_snapshot(self.physical_name(), wait=True).name

    def close(self) -> None:
        with self._call():
            self.client.close()

    # -- collections ------------------------------------------------------------------------------

    def _aliases(self) -> dict[str, str]:
        return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}

    def _exists(self, collection: str) -> bool:
        return self.client.collection_exists(collection)

    def _create(self, collection: str, vector_sizes: dict[str, int], metadata: dict, indexes: dict[str, str]) -> None:
        on_disk = self.layout.quantize_int8 and not self.embedded  # originals on disk, int8 in RAM
        self.client.create_collection(
            collection,
            vectors_config={
                name: models.VectorParams(size=size, distance=models.Distance.COSINE, on_disk=on_disk or None)
                for name, size in vector_sizes.items()
            },
            metadata=metadata,
            **({} if self.embedded else self.layout.create_arguments()),
        )
        if not self.embedded:  # local mode scans everything and ignores payload indexes
            for key, kind in indexes.items():
                self._create_index(collection, key, kind)

    def _indexes(self, collection: str) -> dict[str, str] | None:
        if self.embedded:
            return None
        schema = self.client.get_collection(collection).payload_schema
        return {key: KIND_NAMES[info.data_type] for key, info in schema.items() if info.data_type in KIND_NAMES}

    def _create_index(self, collection: str, key: str, kind: str) -> None:
        self.client.create_payload_index(collection, key, INDEX_KINDS[kind])

    def _describe(self, collection: str) -> CollectionInfo:
        config = self.client.get_collection(collection).config
        vectors = config.params.vectors
        sizes = {name: params.size for name, params in vectors.items()} if isinstance(vectors, dict) else {}
        return CollectionInfo(sizes, dict(config.metadata or {}))

    def _merge_metadata(self, collection: str, metadata: dict[str, Any]) -> None:
        self.client.update_collection(collection, metadata=metadata)

    def _set_alias(self, alias: str, collection: str) -> None:
        operations: list[models.AliasOperations] = []
        if alias in self._aliases():
            operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        create = models.CreateAlias(collection_name=collection, alias_name=alias)
        operations.append(models.CreateAliasOperation(create_alias=create))
        self.client.update_collection_aliases(change_aliases_operations=operations)

    def _delete_collection(self, collection: str) -> None:
        self.client.delete_collection(collection)

    # -- points -----------------------------------------------------------------------------------

    def _upsert(self, records: list[Record]) -> None:
        points = [
            models.PointStruct(id=r.point_id, vector={k: v.tolist() for k, v in r.vectors.items()}, payload=r.payload)
            for r in records
        ]
        self.client.upsert(self.collection, points=points, wait=True)

    def _overwrite_payload(self, point: str, payload: dict[str, Any]) -> None:
        self.client.overwrite_payload(self.collection, payload, points=[point], wait=True)

    def _retrieve(self, points: list[str], *, with_vectors: bool) -> list[Record]:
        found = self.client.retrieve(self.collection, points, with_payload=True, with_vectors=with_vectors)
        return [_record(point) for point in found]

    def _scroll(self, search_filter: SearchFilter, offset: Any, limit: int, with_vectors: bool):
        found, next_offset = self.client.scroll(
            self.collection,
            scroll_filter=_filter(search_filter),
            limit=limit,
            offset=offset,
            with_payload=True,
            with_vectors=with_vectors,
        )
        return [_record(point) for point in found], next_offset

    def _delete(self, points: list[str]) -> None:
        self.client.delete(self.collection, models.PointIdsList(points=points), wait=True)

    def _count(self) -> int:
        return self.client.count(self.collection, exact=True).count

    def _facet(self, key: str, limit: int) -> list[tuple[str, int]]:
        hits = self.client.facet(self.collection, key=key, limit=limit, exact=True).hits
        return [(str(hit.value), hit.count) for hit in hits]

    def _query(self, queries: list[Query]) -> list[list[Record]]:
        """Flat queries in one batch request; grouped ones one by one (Qdrant has no grouped batch)."""
        flat = [q for q in queries if not q.one_per_product]
        requests = [
            models.QueryRequest(
                **_arguments(q), limit=q.limit, offset=q.offset, with_payload=True, with_vector=q.with_vectors
            )
            for q in flat
        ]
        answers = iter(self.client.query_batch_points(self.collection, requests) if requests else [])
        return [self._grouped(q) if q.one_per_product else [_record(p) for p in next(answers).points] for q in queries]

    def _grouped(self, query: Query) -> list[Record]:
        arguments = _arguments(query)
        arguments["query_filter"], arguments["search_params"] = arguments.pop("filter"), arguments.pop("params", None)
        groups = self.client.query_points_groups(
            self.collection,
            group_by=PRODUCT_ID,
            group_size=1,
            limit=query.offset + query.limit,  # grouped queries have no offset: page here
            with_payload=True,
            with_vectors=query.with_vectors,
            **arguments,
        ).groups
        return [_record(group.hits[0]) for group in groups[query.offset :]]

    @contextlib.contextmanager
    def _call(self) -> Iterator[None]:
        """Serialise local-mode calls; turn qdrant-client's failures into `StoreError`s by type."""
        try:
            with self._lock:
                yield
        except (ResponseHandlingException, httpx.TransportError, ConnectionError) as e:
            log.warning("qdrant unreachable", extra={"collection": self.collection, "reason": str(e)})
            raise StoreUnavailable("the vector store (Qdrant) is unreachable; retry later") from e
        except UnexpectedResponse as e:
            if e.status_code in (502, 503, 504):
                raise StoreUnavailable(f"Qdrant answered {e.status_code}") from e
            raise self._refused(e) from e
        except (ValueError, KeyError) as e:  # local mode's answer to a missing collection or point
            raise self._refused(e) from e
        except (sqlite3.DatabaseError, pickle.UnpicklingError, EOFError) as e:  # local mode's storage
            if getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                raise DiskFull("the disk of the embedded store is full: free some space and retry") from e
            raise self._damaged(e) from e

    def _refused(self, cause: Exception) -> StoreError:
        """A request Qdrant refused: a missing collection says so; anything else is logged."""
        with contextlib.suppress(Exception):  # the engine's own calls: this runs inside `_call`
            if self.collection not in self._aliases() and not self._exists(self.collection):
                return self._missing_collection()
        log.warning("qdrant refused a request", extra={"collection": self.collection, "reason": str(cause)[:500]})
        return StoreError(f"the vector store refused a request on collection {self.collection!r} (logged)")


def _record(point: Any) -> Record:
    vectors = point.vector if isinstance(point.vector, dict) else {}
    return Record(str(point.id), point.payload or {}, vectors, float(getattr(point, "score", 0.0) or 0.0))


def _filter(search_filter: SearchFilter) -> models.Filter | None:
    must: list[models.Condition] = []
    if search_filter.categories:
        must.append(models.FieldCondition(key=CATEGORY, match=models.MatchAny(any=list(search_filter.categories))))
    if search_filter.image_source is not None:
        must.append(models.FieldCondition(key=IMAGE_SOURCE, match=models.MatchValue(value=search_filter.image_source)))
    for key, bounds in search_filter.range_keys():
        must.append(models.FieldCondition(key=key, range=models.Range(**dataclasses.asdict(bounds))))
    for match in metadata_matches(search_filter):
        should: list[models.Condition] = [models.FieldCondition(key=match.key, match=models.MatchAny(any=match.texts))]
        if match.integers:
            should.append(models.FieldCondition(key=match.key, match=models.MatchAny(any=match.integers)))
        should += [models.FieldCondition(key=match.key, match=models.MatchValue(value=b)) for b in match.booleans]
        must.append(models.Filter(should=should))
    must_not: list[models.Condition] = []
    if search_filter.exclude:
        must_not.append(models.HasIdCondition(has_id=[point_id(i) for i in search_filter.exclude]))
    if search_filter.exclude_sha256:
        must_not.append(
            models.FieldCondition(key=SHA256, match=models.MatchAny(any=list(search_filter.exclude_sha256)))
        )
    if not must and not must_not:
        return None
    return models.Filter(must=must or None, must_not=must_not or None)


def _arguments(query: Query) -> dict[str, Any]:
    """A `Query`'s ``query``/``using``/``prefetch``/filter arguments for ``query_points``."""
    common: dict[str, Any] = {"filter": _filter(query.search_filter), "score_threshold": query.score_threshold}
    if query.exact:
        common["params"] = models.SearchParams(exact=True)
    if not query.terms:
        return {**common, "query": models.SampleQuery(sample=models.Sample.RANDOM)}
    pools = [
        models.Prefetch(
            query=_vector_query(p.term), using=p.term.using, limit=p.limit, score_threshold=p.score_threshold
        )
        for p in query.pools
    ]
    if not query.fused:
        (term,) = query.terms
        return {**common, "query": _vector_query(term), "using": term.using, "prefetch": pools or None}
    depth = sum(pool.limit for pool in query.pools)
    rescored = [
        models.Prefetch(query=_vector_query(t), using=t.using, limit=depth, prefetch=pools) for t in query.terms
    ]
    formula = models.SumExpression(sum=[models.MultExpression(mult=[w, v]) for w, v in formula_terms(query)])
    query_formula = models.FormulaQuery(formula=formula, defaults=formula_defaults(query))
    return {**common, "query": query_formula, "prefetch": rescored}


def _vector_query(term: Term) -> Any:
    if not term.recommend:
        return _example(term.positive[0])
    examples = models.RecommendInput(
        positive=[_example(e) for e in term.positive],
        negative=[_example(e) for e in term.negative],
        strategy=models.RecommendStrategy.BEST_SCORE,
    )
    return models.RecommendQuery(recommend=examples)


def _example(example: Example) -> Any:
    """A stored item's point id (Qdrant reads its vector), or a vector."""
    return point_id(example) if isinstance(example, str) else example.astype("float32").tolist()
