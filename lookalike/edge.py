"""Qdrant Edge (``qdrant-edge-py``) behind the part of ``QdrantClient`` that `VectorStore` uses.

Qdrant Edge is Qdrant's own engine in-process: real payload indexes and HNSW, a write-ahead log,
and no pure-Python scan (see bench/b2_edge_probe.py). It knows shards, not collections, so this
adapter keeps one shard per collection under ``<path>/collections/<name>/``, the collection's
vector size and metadata in a JSON file beside it, and the aliases in ``<path>/aliases.json``
(replaced atomically, so an alias switch is still one step). Requests and answers use
qdrant-client's ``models`` so `VectorStore` does not know which engine it talks to.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import portalocker
import qdrant_edge as edge
from qdrant_client import models

COLLECTIONS = "collections"
SHARD = "shard"
COLLECTION_FILE = "collection.json"
ALIASES_FILE = "aliases.json"


class EdgeClient:
    """The subset of ``QdrantClient`` that `lookalike.store.VectorStore` calls."""

    indexes_payload = True  # unlike qdrant-client's local mode, Edge uses payload indexes

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        (self.path / COLLECTIONS).mkdir(parents=True, exist_ok=True)
        self._lock_file = (self.path / ".lock").open("a")
        try:
            portalocker.lock(self._lock_file, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
        except portalocker.exceptions.LockException as e:
            self._lock_file.close()
            # The same words as qdrant-client's local mode, so one handler explains both.
            raise RuntimeError(f"Storage folder {self.path} is already accessed by another instance") from e
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
        return (self._directory(self._resolve(name)) / COLLECTION_FILE).is_file()

    def create_collection(
        self, name: str, vectors_config: dict[str, models.VectorParams], metadata: dict | None = None, **_: Any
    ) -> bool:
        directory = self._directory(name)
        directory.mkdir(parents=True)
        vectors = {
            vector: edge.EdgeVectorParams(size=params.size, distance=edge.Distance.Cosine)
            for vector, params in vectors_config.items()
        }
        self._shards[name] = edge.EdgeShard.create(str(directory / SHARD), edge.EdgeConfig(vectors=vectors))
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
        edge_points = [edge.Point(str(p.id), p.vector, p.payload) for p in points]
        self._shard(name).update(edge.UpdateOperation.upsert_points(edge_points))

    def overwrite_payload(self, name: str, payload: dict, points: list[str], wait: bool = True) -> None:
        self._shard(name).update(edge.UpdateOperation.overwrite_payload([str(p) for p in points], payload))

    def delete(self, name: str, points_selector: models.PointIdsList, wait: bool = True) -> None:
        ids = [str(p) for p in points_selector.points]
        self._shard(name).update(edge.UpdateOperation.delete_points(ids))

    def retrieve(self, name: str, ids: list[str], with_payload: bool = True, with_vectors: bool = False) -> list:
        return self._shard(name).retrieve([str(i) for i in ids], with_payload, with_vectors)

    def scroll(self, name: str, scroll_filter=None, limit: int = 10, offset=None, **_: Any) -> tuple[list, Any]:
        request = edge.ScrollRequest(offset=offset, limit=limit, filter=_filter(scroll_filter), with_payload=True)
        return self._shard(name).scroll(request)

    def count(self, name: str, exact: bool = True) -> SimpleNamespace:
        return SimpleNamespace(count=self._shard(name).count(edge.CountRequest(exact=exact)))

    def facet(self, name: str, key: str, limit: int = 10, exact: bool = False) -> Any:
        return self._shard(name).facet(edge.FacetRequest(key, limit=limit, exact=exact))

    def query_points(
        self,
        name: str,
        query: Any,
        using: str | None = None,
        query_filter: models.Filter | None = None,
        limit: int = 10,
        offset: int = 0,
        score_threshold: float | None = None,
        with_payload: bool = True,
    ) -> SimpleNamespace:
        if isinstance(query, models.SampleQuery):
            edge_query = edge.Sample.Random
        elif isinstance(query, models.RecommendQuery):
            examples = query.recommend
            positives = [self._vector(name, e, using) for e in examples.positive or []]
            negatives = [self._vector(name, e, using) for e in examples.negative or []]
            edge_query = edge.Query.RecommendBestScore(edge.RecommendQuery(positives, negatives), using=using)
        elif isinstance(query, str):  # a point id: search with its stored vector
            edge_query = edge.Query.Nearest(self._vector(name, query, using), using=using)
        else:
            edge_query = edge.Query.Nearest(list(query), using=using)
        request = edge.QueryRequest(
            limit=limit,
            offset=offset or None,
            query=edge_query,
            filter=_filter(query_filter),
            score_threshold=score_threshold,
            with_payload=with_payload,
        )
        return SimpleNamespace(points=self._shard(name).query(request))

    def query_batch_points(self, name: str, requests: list[models.QueryRequest]) -> list[SimpleNamespace]:
        return [
            self.query_points(
                name, r.query, r.using, r.filter, r.limit, r.offset or 0, r.score_threshold, bool(r.with_payload)
            )
            for r in requests
        ]

    def optimize(self, name: str) -> None:
        """Build the HNSW index of what was ingested (Edge leaves small or new segments unindexed)."""
        self._shard(name).optimize()

    def close(self) -> None:
        for shard in self._shards.values():
            shard.flush()
            shard.close()
        self._shards.clear()
        if not self._lock_file.closed:
            portalocker.unlock(self._lock_file)
            self._lock_file.close()

    # -- internals ----------------------------------------------------------------------------

    def _vector(self, name: str, example: Any, using: str | None) -> list[float]:
        """An example given as a point id becomes its stored vector (Edge queries take vectors)."""
        if not isinstance(example, str):
            return list(example)
        (record,) = self._shard(name).retrieve([example], False, True)
        return record.vector[using]

    def _aliases(self) -> dict[str, str]:
        return self._alias_map

    def _resolve(self, name: str) -> str:
        return self._aliases().get(name, name)

    def _directory(self, name: str) -> Path:
        return self.path / COLLECTIONS / name

    def _described(self, name: str) -> dict:
        path = self._directory(self._resolve(name)) / COLLECTION_FILE
        if not path.is_file():
            raise ValueError(f"Collection {name} not found")
        return json.loads(path.read_text())

    def _shard(self, name: str) -> edge.EdgeShard:
        physical = self._resolve(name)
        if physical not in self._shards:
            self._described(physical)  # "not found" for a missing collection
            self._shards[physical] = edge.EdgeShard.load(str(self._directory(physical) / SHARD))
        return self._shards[physical]


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
        if isinstance(match, models.MatchValue):
            return edge.FieldCondition(condition.key, match=edge.MatchValue(match.value))
    raise ValueError(f"condition not supported on Qdrant Edge: {condition!r}")


def _write_json(path: Path, data: Any) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(data, tmp)
    os.replace(tmp.name, path)
