"""Qdrant Edge (``qdrant-edge-py``) behind the part of ``QdrantClient`` that `VectorStore` uses.

Qdrant Edge is Qdrant's own engine in-process: real payload indexes and HNSW, a write-ahead log,
and no pure-Python scan (see bench/b2_edge_probe.py). It knows shards, not collections, so this
adapter keeps one shard per collection under ``<path>/collections/<name>/``, the collection's
vector size and metadata in a JSON file beside it, and the aliases in ``<path>/aliases.json``
(replaced atomically, so an alias switch is still one step). Requests and answers use
qdrant-client's ``models`` so `VectorStore` does not know which engine it talks to.

qdrant-edge-py 0.9.0 turns a boolean in a filter into the integer 1/0, which never matches a
stored JSON boolean. So the adapter also stores every boolean of a payload as a keyword
(``"metadata.sale=true"``) under a private key, matches boolean conditions there, and strips
that key from every answer.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import qdrant_edge as edge
from qdrant_client import models

from lookalike.errors import DAMAGED_HINT, StoreDamaged
from lookalike.lockfile import ProcessLock

COLLECTIONS = "collections"
SHARD = "shard"
COLLECTION_FILE = "collection.json"
ALIASES_FILE = "aliases.json"
#: The number of points a collection held after its last write, checked when it is loaded.
FLOOR_FILE = "points.json"
#: Qdrant's defaults, spelled out: below 10 MB of vectors matching a filter, search them exactly.
#: Payloads stay in RAM (Memory.Pinned, ~300 B an item): every hit reads one (bench/b2: rare-category
#: filter at 100k, 0.78 -> 0.62 ms; unfiltered 0.89 -> 0.62 ms).
HNSW = edge.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000)
#: Adapter-private payload key: a keyword per boolean in the payload (see the module docstring).
BOOLEANS = "_edge_booleans"


class EdgeClient:
    """The subset of ``QdrantClient`` that `lookalike.store.VectorStore` calls."""

    indexes_payload = True  # unlike qdrant-client's local mode, Edge uses payload indexes

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        (self.path / COLLECTIONS).mkdir(parents=True, exist_ok=True)
        self._lock = ProcessLock(self.path)  # StoreLockBusy when another process holds the folder
        self._shards: dict[str, edge.EdgeShard] = {}
        # Read once: the lock makes this process the only writer, so memory stays authoritative and
        # a search never touches the file.
        aliases_file = self.path / ALIASES_FILE
        self._alias_map: dict[str, str] = json.loads(aliases_file.read_text()) if aliases_file.is_file() else {}

    # -- collections and aliases ------------------------------------------------------------

    def get_aliases(self) -> models.CollectionsAliasesResponse:
        return models.CollectionsAliasesResponse(
            aliases=[models.AliasDescription(alias_name=a, collection_name=c) for a, c in self._aliases().items()]
        )

    def collection_exists(self, name: str) -> bool:
        directory = self._directory(self._resolve(name))
        if (directory / COLLECTION_FILE).is_file():
            return True
        if (directory / SHARD).exists():  # a shard whose description was lost: never "just missing"
            raise StoreDamaged(f"collection {name!r} has lost its {COLLECTION_FILE}; {DAMAGED_HINT}")
        return False

    def create_collection(
        self, name: str, vectors_config: dict[str, models.VectorParams], metadata: dict | None = None, **_: Any
    ) -> bool:
        directory = self._directory(name)
        directory.mkdir(parents=True)
        vectors = {
            vector: edge.EdgeVectorParams(size=params.size, distance=edge.Distance.Cosine)
            for vector, params in vectors_config.items()
        }
        config = edge.EdgeConfig(vectors=vectors, payload_memory=edge.Memory.Pinned, hnsw_config=HNSW)
        self._shards[name] = edge.EdgeShard.create(str(directory / SHARD), config)
        self._shards[name].update(edge.UpdateOperation.create_field_index(BOOLEANS, edge.PayloadSchemaType.Keyword))
        sizes = {vector: params.size for vector, params in vectors_config.items()}
        _write_json(directory / COLLECTION_FILE, {"vectors": sizes, "metadata": metadata or {}})
        return True

    def get_collection(self, name: str) -> SimpleNamespace:
        described = self._described(name)
        vectors = {
            vector: models.VectorParams(size=size, distance=models.Distance.COSINE)
            for vector, size in described["vectors"].items()
        }
        return SimpleNamespace(
            config=SimpleNamespace(metadata=described["metadata"], params=SimpleNamespace(vectors=vectors))
        )

    def update_collection(self, name: str, metadata: dict | None = None, **_: Any) -> bool:
        """Merge ``metadata`` into the collection's, as Qdrant does (written atomically)."""
        physical = self._resolve(name)
        described = self._described(physical)
        described["metadata"] = {**described.get("metadata", {}), **(metadata or {})}
        _write_json(self._directory(physical) / COLLECTION_FILE, described)
        return True

    def create_payload_index(self, name: str, key: str, schema: models.PayloadSchemaType) -> None:
        self._shard(name).update(edge.UpdateOperation.create_field_index(key, edge.PayloadSchemaType.Keyword))

    def update_collection_aliases(self, change_aliases_operations: list[models.AliasOperations]) -> bool:
        aliases = dict(self._alias_map)  # applied to a copy: a rejected operation changes nothing
        for operation in change_aliases_operations:
            if isinstance(operation, models.DeleteAliasOperation):
                aliases.pop(operation.delete_alias.alias_name, None)
            elif isinstance(operation, models.CreateAliasOperation):
                create = operation.create_alias
                if not (self._directory(create.collection_name) / COLLECTION_FILE).is_file():
                    raise ValueError(f"Collection {create.collection_name} not found")
                aliases[create.alias_name] = create.collection_name
            else:
                raise ValueError(f"unsupported alias operation {operation!r}")
        _write_json(self.path / ALIASES_FILE, aliases)
        self._alias_map = aliases
        return True

    def delete_collection(self, name: str) -> bool:
        shard = self._shards.pop(name, None)
        if shard is not None:
            shard.close()
        shutil.rmtree(self._directory(name), ignore_errors=True)
        return True

    # -- points -------------------------------------------------------------------------------

    def upsert(self, name: str, points: list[models.PointStruct], wait: bool = True) -> None:
        edge_points = [edge.Point(str(p.id), p.vector, _mirror_booleans(p.payload or {})) for p in points]
        shard = self._shard(name)
        shard.update(edge.UpdateOperation.upsert_points(edge_points))
        self._write_floor(name, shard.count(edge.CountRequest(exact=True)))

    def overwrite_payload(self, name: str, payload: dict, points: list[str], wait: bool = True) -> None:
        ids = [str(p) for p in points]
        self._shard(name).update(edge.UpdateOperation.overwrite_payload(ids, _mirror_booleans(payload)))

    def delete(self, name: str, points_selector: models.PointIdsList, wait: bool = True) -> None:
        ids = [str(p) for p in points_selector.points]
        shard = self._shard(name)
        before = shard.count(edge.CountRequest(exact=True))
        self._write_floor(name, max(0, before - len(ids)))  # first: a crash mid-delete is no false alarm
        shard.update(edge.UpdateOperation.delete_points(ids))
        self._write_floor(name, shard.count(edge.CountRequest(exact=True)))

    def retrieve(self, name: str, ids: list[str], with_payload: bool = True, with_vectors: bool = False) -> list:
        return _public(self._shard(name).retrieve([str(i) for i in ids], with_payload, with_vectors))

    def scroll(
        self, name: str, scroll_filter=None, limit: int = 10, offset=None, with_vectors: bool = False, **_: Any
    ) -> tuple[list, Any]:
        request = edge.ScrollRequest(
            offset=offset, limit=limit, filter=_filter(scroll_filter), with_payload=True, with_vector=with_vectors
        )
        records, next_offset = self._shard(name).scroll(request)
        return _public(records), next_offset

    def count(self, name: str, exact: bool = True) -> SimpleNamespace:
        return SimpleNamespace(count=self._shard(name).count(edge.CountRequest(exact=exact)))

    def facet(self, name: str, key: str, limit: int = 10, exact: bool = False) -> Any:
        return self._shard(name).facet(edge.FacetRequest(key, limit=limit, exact=exact))

    def query_points(
        self,
        name: str,
        query: Any,
        using: str | None = None,
        prefetch: list[models.Prefetch] | None = None,
        query_filter: models.Filter | None = None,
        limit: int = 10,
        offset: int = 0,
        score_threshold: float | None = None,
        with_payload: bool = True,
        search_params: models.SearchParams | None = None,
    ) -> SimpleNamespace:
        request = self._request(
            name, query, using, prefetch, query_filter, limit, offset, score_threshold, with_payload, search_params
        )
        return SimpleNamespace(points=_public(self._shard(name).query(request)))

    def query_batch_points(self, name: str, requests: list[models.QueryRequest]) -> list[SimpleNamespace]:
        """Edge's own batch: one planned pass over the segments for all requests (ingest's
        near-duplicate check sends one per image of a batch)."""
        edge_requests = [
            self._request(
                name,
                r.query,
                r.using,
                r.prefetch,  # type: ignore[arg-type]
                r.filter,
                r.limit or 10,
                r.offset or 0,
                r.score_threshold,
                bool(r.with_payload),
            )
            for r in requests
        ]
        answers = self._shard(name).query_batch(edge.QueryBatchRequest(edge_requests)) if edge_requests else []
        return [SimpleNamespace(points=_public(points)) for points in answers]

    def _request(
        self,
        name: str,
        query: Any,
        using: str | None,
        prefetch: list[models.Prefetch] | None,
        query_filter: models.Filter | None,
        limit: int,
        offset: int,
        score_threshold: float | None,
        with_payload: bool,
        search_params: models.SearchParams | None = None,
    ) -> edge.QueryRequest:
        vectors: dict[tuple[str, str | None], list[float]] = {}  # ids met again in nested prefetches
        return edge.QueryRequest(
            params=edge.SearchParams(exact=True) if search_params and search_params.exact else None,
            limit=limit,
            offset=offset or None,
            query=self._query(name, query, using, vectors),
            prefetches=[self._prefetch(name, p, vectors) for p in prefetch or []] or None,
            filter=_filter(query_filter),
            score_threshold=score_threshold,
            with_payload=with_payload,
        )

    def query_points_groups(
        self, name: str, group_by: str, limit: int = 10, group_size: int = 1, **arguments: Any
    ) -> SimpleNamespace:
        """Edge has no grouped query in Python: page through the ranking until enough groups fill.

        The same over-fetching that Qdrant does inside its grouping, with the same answer shape.
        """
        groups: dict[Any, list] = {}
        fetched, page = 0, max(4 * limit * group_size, 32)
        while True:
            points = self.query_points(name, limit=page, offset=fetched, **arguments).points
            for point in points:
                key = (point.payload or {}).get(group_by)
                if key is None:
                    continue  # as in Qdrant: points without the key are in no group
                members = groups.setdefault(key, []) if key in groups or len(groups) < limit else None
                if members is not None and len(members) < group_size:
                    members.append(point)
            fetched += len(points)
            full = len(groups) >= limit and all(len(m) >= group_size for m in groups.values())
            if full or len(points) < page:
                break
        return SimpleNamespace(groups=[SimpleNamespace(id=key, hits=hits) for key, hits in groups.items()])

    def flush(self) -> None:
        """Write everything this process holds to disk (before a backup copy)."""
        for shard in self._shards.values():
            shard.flush()

    def optimize(self, name: str) -> None:
        """Build the HNSW index of what was ingested (Edge leaves small or new segments unindexed)."""
        self._shard(name).optimize()

    def close(self) -> None:
        for shard in self._shards.values():
            shard.flush()
            shard.close()
        self._shards.clear()
        self._lock.release()

    # -- internals ----------------------------------------------------------------------------

    def _query(self, name: str, query: Any, using: str | None, vectors: dict) -> Any:
        """qdrant-client's query (a vector, a point id, recommend, sample, formula) -> Edge's."""
        if query is None:
            return None
        if isinstance(query, models.SampleQuery):
            return edge.Sample.Random
        if isinstance(query, models.FormulaQuery):
            return edge.Formula(_expression(query.formula))
        if isinstance(query, models.RecommendQuery):
            examples = query.recommend
            positives = [self._vector(name, e, using, vectors) for e in examples.positive or []]
            negatives = [self._vector(name, e, using, vectors) for e in examples.negative or []]
            return edge.Query.RecommendBestScore(edge.RecommendQuery(positives, negatives), using=using)
        return edge.Query.Nearest(self._vector(name, query, using, vectors), using=using)

    def _prefetch(self, name: str, prefetch: models.Prefetch, vectors: dict) -> edge.Prefetch:
        inner = prefetch.prefetch if isinstance(prefetch.prefetch, list) else [prefetch.prefetch]
        return edge.Prefetch(
            limit=prefetch.limit or 10,
            query=self._query(name, prefetch.query, prefetch.using, vectors),
            prefetches=[self._prefetch(name, p, vectors) for p in inner if p is not None] or None,
            filter=_filter(prefetch.filter),
            score_threshold=prefetch.score_threshold,
        )

    def _vector(self, name: str, example: Any, using: str | None, vectors: dict) -> list[float]:
        """An example given as a point id becomes its stored vector (Edge queries take vectors),
        read once per request however often the id appears in it."""
        if not isinstance(example, str):
            return list(example)
        if (example, using) not in vectors:
            records = self._shard(name).retrieve([example], False, True)
            if not records:  # deleted since the caller looked it up
                raise KeyError(f"no point {example}")
            (record,) = records
            vectors.update(((example, vector), values) for vector, values in record.vector.items())
        return vectors[(example, using)]

    def _aliases(self) -> dict[str, str]:
        return self._alias_map

    def _resolve(self, name: str) -> str:
        return self._aliases().get(name, name)

    def _directory(self, name: str) -> Path:
        return self.path / COLLECTIONS / name

    def _described(self, name: str) -> dict:
        path = self._directory(self._resolve(name)) / COLLECTION_FILE
        if not self.collection_exists(name):
            raise ValueError(f"Collection {name} not found")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise StoreDamaged(f"collection {name!r}: {COLLECTION_FILE} is unreadable ({e}); {DAMAGED_HINT}") from e

    def _shard(self, name: str) -> edge.EdgeShard:
        physical = self._resolve(name)
        if physical not in self._shards:
            self._described(physical)  # "not found" for a missing collection
            shard = edge.EdgeShard.load(str(self._directory(physical) / SHARD))
            self._check_floor(physical, shard)
            self._shards[physical] = shard
        return self._shards[physical]

    def _write_floor(self, name: str, count: int) -> None:
        _write_json(self._directory(self._resolve(name)) / FLOOR_FILE, {"at_least": count})

    def _check_floor(self, name: str, shard: edge.EdgeShard) -> None:
        """A shard that lost points (a lost id mapping, a missing segment) loads without complaint
        and answers from what is left: compare with the count recorded after the last write."""
        path = self._directory(name) / FLOOR_FILE
        if not path.is_file():
            return
        floor = json.loads(path.read_text())["at_least"]
        count = shard.count(edge.CountRequest(exact=True))
        if count < floor:
            shard.close()
            raise StoreDamaged(
                f"collection {name!r} holds {count} items but held at least {floor} after its last write; "
                f"{DAMAGED_HINT}"
            )


def _filter(query_filter: models.Filter | None) -> edge.Filter | None:
    """qdrant-client's filter -> Edge's, for the conditions `VectorStore` builds."""
    if query_filter is None:
        return None
    return edge.Filter(
        must=_conditions(query_filter.must),
        should=_conditions(query_filter.should),
        must_not=_conditions(query_filter.must_not),
    )


def _conditions(conditions: Any) -> list | None:
    if conditions is None:
        return None
    return [_condition(c) for c in (conditions if isinstance(conditions, list) else [conditions])]


def _condition(condition: Any) -> Any:
    if isinstance(condition, models.Filter):
        return _filter(condition)
    if isinstance(condition, models.HasIdCondition):
        return edge.HasIdCondition({str(i) for i in condition.has_id})
    if isinstance(condition, models.FieldCondition):
        match = condition.match
        if isinstance(match, models.MatchAny):
            return edge.FieldCondition(condition.key, match=edge.MatchAny(list(match.any)))
        if isinstance(match, models.MatchValue) and isinstance(match.value, bool):
            return edge.FieldCondition(BOOLEANS, match=edge.MatchValue(_boolean_keyword(condition.key, match.value)))
        if isinstance(match, models.MatchValue):
            return edge.FieldCondition(condition.key, match=edge.MatchValue(match.value))
    raise ValueError(f"condition not supported on Qdrant Edge: {condition!r}")


def _expression(expression: Any) -> edge.Expression:
    """The formula subset `VectorStore` builds: sums and products of constants and prefetch scores."""
    if isinstance(expression, int | float):
        return edge.Expression.Constant(float(expression))
    if isinstance(expression, str):
        return edge.Expression.Variable(expression)
    if isinstance(expression, models.SumExpression):
        return edge.Expression.Sum([_expression(e) for e in expression.sum])
    if isinstance(expression, models.MultExpression):
        return edge.Expression.Mult([_expression(e) for e in expression.mult])
    raise ValueError(f"formula not supported on Qdrant Edge: {expression!r}")


def _mirror_booleans(payload: dict) -> dict:
    """The payload plus a keyword per boolean in it, under `BOOLEANS`."""
    keywords = [_boolean_keyword(path, value) for path, value in _booleans(payload)]
    return {**payload, BOOLEANS: keywords} if keywords else payload


def _booleans(value: Any, path: str = "") -> Iterator[tuple[str, bool]]:
    if isinstance(value, bool):
        yield path, value
    elif isinstance(value, dict):
        for key, inner in value.items():
            if key != BOOLEANS:
                yield from _booleans(inner, f"{path}.{key}" if path else key)
    elif isinstance(value, list):  # as in Qdrant: a list matches when any element does
        for inner in value:
            yield from _booleans(inner, path)


def _boolean_keyword(path: str, value: bool) -> str:
    return f"{path}={'true' if value else 'false'}"


def _public(points: list) -> list[_Point]:
    return [_Point(point) for point in points]


class _Point:
    """An Edge record or scored point without the adapter's private key. Its other fields are
    read from Edge only when asked for (a search reads payload and score, never the id)."""

    __slots__ = ("_point", "payload")

    def __init__(self, point: Any) -> None:
        self._point = point
        payload = point.payload
        self.payload = (
            {k: v for k, v in payload.items() if k != BOOLEANS} if payload and BOOLEANS in payload else payload
        )

    @property
    def id(self) -> Any:
        return self._point.id

    @property
    def score(self) -> float | None:
        return getattr(self._point, "score", None)

    @property
    def vector(self) -> Any:
        return self._point.vector


def _write_json(path: Path, data: Any) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(data, tmp)
    os.replace(tmp.name, path)
