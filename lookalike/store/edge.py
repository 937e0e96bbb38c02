"""The store on Qdrant Edge (``qdrant-edge-py``): Qdrant's engine in-process, in a folder.

Real payload indexes and HNSW, a write-ahead log, no pure-Python scan (bench/b2_edge_probe.py).
Edge knows shards, not collections: one shard per collection under
``<path>/collections/<name>/``, its vector sizes and metadata in a JSON file beside it, and the
aliases in ``<path>/aliases.json`` (replaced atomically, so an alias switch is one step). Queries
(`lookalike.queries`) become Edge's own types here and nowhere else.

qdrant-edge-py 0.9.0 turns a boolean in a filter into the integer 1/0, which never matches a
stored JSON boolean. So every boolean of a payload is also stored as a keyword
(``"metadata.sale=true"``) under a private key, boolean conditions match there, and that key
is stripped from every answer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as edge

from lookalike.errors import DAMAGED_HINT, ItemNotFound, StoreDamaged, StoreError, StoreOutOfSpace
from lookalike.files import MIB, ensure_free_space, on_tmpfs, unallocated_bytes, write_atomically
from lookalike.lockfile import ProcessLock
from lookalike.points import CATEGORY, IMAGE_SOURCE, PRODUCT_ID, SHA256, point_id
from lookalike.queries import (
    Example,
    MetadataMatch,
    Query,
    SearchFilter,
    Term,
    formula_defaults,
    formula_terms,
    metadata_matches,
)
from lookalike.store.base import Record, VectorStore
from lookalike.store.rollout import CollectionInfo

log = logging.getLogger(__name__)

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
INDEX_KINDS = {"keyword": edge.PayloadSchemaType.Keyword, "number": edge.PayloadSchemaType.Float}
KIND_NAMES = {schema_type: kind for kind, schema_type in INDEX_KINDS.items()}
#: Private payload key: a keyword per boolean in the payload (see the module docstring).
BOOLEANS = "_edge_booleans"
#: Edge maps its files into memory, so a write past the end of a full disk kills the process
#: (SIGBUS) instead of failing. Writes are refused below this much free space: a new collection
#: takes ~43 MiB at once (its write-ahead log), a new log segment 32 MiB, a batch well under 1.
MIN_FREE = 64 * MIB


class EdgeFolder:
    """What every store bound to one folder shares: its lock, open shards and aliases."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        (self.path / COLLECTIONS).mkdir(parents=True, exist_ok=True)
        self.lock = ProcessLock(self.path)  # StoreLockBusy when another process holds the folder
        self.shards: dict[str, edge.EdgeShard] = {}
        # Read once: the lock makes this process the only writer, so memory stays authoritative.
        aliases = self.path / ALIASES_FILE
        self.aliases: dict[str, str] = json.loads(aliases.read_text()) if aliases.is_file() else {}

    def directory(self, collection: str) -> Path:
        return self.path / COLLECTIONS / collection


class EdgeStore(VectorStore):
    """`VectorStore` over Qdrant Edge shards in a folder this process holds."""

    def __init__(self, folder: EdgeFolder, collection: str) -> None:
        super().__init__(collection, embedded=True)
        self.folder = folder
        self._sync_every_s, self._synced_at = 0.0, 0.0  # 0: every write is synced (`writing_behind`)

    def flush(self) -> None:
        with self._call():
            for shard in self.folder.shards.values():
                shard.flush()

    @contextlib.contextmanager
    def writing_behind(self, sync_every_s: float) -> Iterator[VectorStore]:
        """A twin whose upserts are synced (`_commit`) every ``sync_every_s`` and at the end, not
        each: ingest's sync a batch was a third of its write time and held the GIL its main thread
        needs. A write not synced yet survives a killed process (the kernel holds it), and what a
        power cut takes, the rerun writes again; the API's writes (this store) are synced each."""
        twin = self.bound_to(self.collection)
        twin._sync_every_s, twin._synced_at = sync_every_s, time.monotonic()
        yield twin
        with twin._call():
            shard = twin.folder.shards.get(twin._physical(twin.collection))
            if shard is not None:
                twin._commit(shard)

    def optimize(self) -> None:
        """Build the HNSW index of what was ingested (Edge leaves small or new segments unindexed)."""
        with self._call():
            # The indexed copy: the vectors again and ~1 KiB a point of graph (30,000 points: +104 MiB).
            vector_bytes = 4 * sum(self._describe(self.collection).vector_sizes.values())
            self._ensure_room(self._count() * (vector_bytes + 1024))
            self._shard().optimize()

    def close(self) -> None:
        with self._lock:
            for shard in self.folder.shards.values():
                shard.flush()
                shard.close()
            self.folder.shards.clear()
            self.folder.lock.release()

    # -- collections ------------------------------------------------------------------------------

    def _aliases(self) -> dict[str, str]:
        return dict(self.folder.aliases)

    def _exists(self, collection: str) -> bool:
        directory = self.folder.directory(collection)
        if (directory / COLLECTION_FILE).is_file():
            return True
        if (directory / SHARD).exists():  # a shard whose description was lost: never "just missing"
            raise StoreDamaged(f"collection {collection!r} has lost its {COLLECTION_FILE}; {DAMAGED_HINT}")
        return False

    def _create(self, collection: str, vector_sizes: dict[str, int], metadata: dict, indexes: dict[str, str]) -> None:
        self._ensure_room()
        directory = self.folder.directory(collection)
        directory.mkdir(parents=True)
        vectors = {
            name: edge.EdgeVectorParams(size=size, distance=edge.Distance.Cosine) for name, size in vector_sizes.items()
        }
        config = edge.EdgeConfig(vectors=vectors, payload_memory=edge.Memory.Pinned, hnsw_config=HNSW)
        shard = self.folder.shards[collection] = edge.EdgeShard.create(str(directory / SHARD), config)
        for key, kind in {BOOLEANS: "keyword", **indexes}.items():
            shard.update(edge.UpdateOperation.create_field_index(key, INDEX_KINDS[kind]))
        _write_json(directory / COLLECTION_FILE, {"vectors": vector_sizes, "metadata": metadata})

    def _indexes(self, collection: str) -> dict[str, str]:
        """Of this store's shard (the lifecycle passes its physical name as ``collection``)."""
        schema = self._shard().info().payload_schema
        return {key: KIND_NAMES[info.data_type] for key, info in schema.items() if info.data_type in KIND_NAMES}

    def _create_index(self, collection: str, key: str, kind: str) -> None:
        self._ensure_room()
        self._shard().update(edge.UpdateOperation.create_field_index(key, INDEX_KINDS[kind]))

    def _describe(self, collection: str) -> CollectionInfo:
        described = self._described(self._physical(collection))
        return CollectionInfo(dict(described["vectors"]), dict(described.get("metadata") or {}))

    def _merge_metadata(self, collection: str, metadata: dict[str, Any]) -> None:
        described = self._described(collection)
        described["metadata"] = {**described.get("metadata", {}), **metadata}
        _write_json(self.folder.directory(collection) / COLLECTION_FILE, described)

    def _set_alias(self, alias: str, collection: str) -> None:
        if not self._exists(collection):
            raise StoreError(f"cannot point {alias!r} at {collection!r}: no such collection")
        aliases = {**self.folder.aliases, alias: collection}
        _write_json(self.folder.path / ALIASES_FILE, aliases)
        self.folder.aliases = aliases

    def _delete_collection(self, collection: str) -> None:
        shard = self.folder.shards.pop(collection, None)
        if shard is not None:
            shard.close()
        shutil.rmtree(self.folder.directory(collection), ignore_errors=True)

    # -- points -----------------------------------------------------------------------------------

    def _upsert(self, records: list[Record]) -> None:
        points = [
            edge.Point(r.point_id, {k: v.tolist() for k, v in r.vectors.items()}, _with_booleans(r.payload))
            for r in records
        ]
        self._ensure_room()
        shard = self._shard()
        shard.update(edge.UpdateOperation.upsert_points(points))
        self._commit(shard, due_only=True)

    def _overwrite_payload(self, point: str, payload: dict[str, Any]) -> None:
        self._ensure_room()
        self._shard().update(edge.UpdateOperation.overwrite_payload([point], _with_booleans(payload)))

    def _retrieve(self, points: list[str], *, with_vectors: bool) -> list[Record]:
        return [_record(p) for p in self._shard().retrieve(points, True, with_vectors)]

    def _scroll(self, search_filter: SearchFilter, offset: Any, limit: int, with_vectors: bool):
        request = edge.ScrollRequest(
            offset=offset, limit=limit, filter=_filter(search_filter), with_payload=True, with_vector=with_vectors
        )
        found, next_offset = self._shard().scroll(request)
        return [_record(p) for p in found], next_offset

    def _delete(self, points: list[str]) -> None:
        self._ensure_room()  # a delete is written to the log too
        shard = self._shard()
        before = shard.count(edge.CountRequest(exact=True))
        self._write_floor(max(0, before - len(points)))  # first: a crash mid-delete is no false alarm
        shard.update(edge.UpdateOperation.delete_points(points))
        self._commit(shard)

    def _count(self) -> int:
        return self._shard().count(edge.CountRequest(exact=True))

    def _facet(self, key: str, limit: int) -> list[tuple[str, int]]:
        hits = self._shard().facet(edge.FacetRequest(key, limit=limit, exact=True)).hits
        return [(str(hit.value), hit.count) for hit in hits]

    def _query(self, queries: list[Query]) -> list[list[Record]]:
        """Flat queries in one Edge batch (one planned pass over the segments); grouped ones paged."""
        flat = [q for q in queries if not q.one_per_product]
        vectors: dict[tuple[str, str], list[float]] = {}  # example ids, read once per batch
        requests = [self._request(q, q.limit, q.offset, vectors) for q in flat]
        answers = iter(self._shard().query_batch(edge.QueryBatchRequest(requests)) if requests else [])
        return [
            self._grouped(q, vectors) if q.one_per_product else [_record(p) for p in next(answers)] for q in queries
        ]

    def _grouped(self, query: Query, vectors: dict) -> list[Record]:
        """Edge has no grouped query: page through the ranking until enough products fill, the
        over-fetching Qdrant does inside its grouping; the first (best) hit of each product."""
        best: dict[Any, Record] = {}
        fetched, page, wanted = 0, max(4 * (query.offset + query.limit), 32), query.offset + query.limit
        while len(best) < wanted:
            points = self._shard().query(self._request(query, page, fetched, vectors))
            for record in map(_record, points):
                product = record.payload.get(PRODUCT_ID)
                if product is not None and product not in best and len(best) < wanted:
                    best[product] = record
            fetched += len(points)
            if len(points) < page:
                break
        return list(best.values())[query.offset :]

    def _request(self, query: Query, limit: int, offset: int, vectors: dict) -> edge.QueryRequest:
        return edge.QueryRequest(
            limit=limit,
            offset=offset or None,
            query=self._scoring(query, vectors),
            prefetches=self._prefetches(query, vectors),
            filter=_filter(query.search_filter),
            score_threshold=query.score_threshold,
            with_payload=True,
            with_vector=query.with_vectors,
            params=edge.SearchParams(exact=True) if query.exact else None,
        )

    def _scoring(self, query: Query, vectors: dict) -> Any:
        if not query.terms:
            return edge.Sample.Random
        if not query.fused:
            return self._vector_query(query.terms[0], vectors)
        products = [
            edge.Expression.Mult([edge.Expression.Constant(weight), edge.Expression.Variable(variable)])
            for weight, variable in formula_terms(query)
        ]
        return edge.Formula(edge.Expression.Sum(products), defaults=formula_defaults(query))

    def _prefetches(self, query: Query, vectors: dict) -> list[edge.Prefetch] | None:
        pools = [
            edge.Prefetch(limit=p.limit, query=self._vector_query(p.term, vectors), score_threshold=p.score_threshold)
            for p in query.pools
        ]
        if not query.fused:
            return pools or None
        depth = sum(pool.limit for pool in query.pools)
        return [edge.Prefetch(limit=depth, query=self._vector_query(t, vectors), prefetches=pools) for t in query.terms]

    def _vector_query(self, term: Term, vectors: dict) -> Any:
        def vector(example: Example) -> list[float]:
            return self._vector(example, term.using, vectors)

        if not term.recommend:
            return edge.Query.Nearest(vector(term.positive[0]), using=term.using)
        examples = edge.RecommendQuery([vector(e) for e in term.positive], [vector(e) for e in term.negative])
        return edge.Query.RecommendBestScore(examples, using=term.using)

    def _vector(self, example: Example, using: str, vectors: dict) -> list[float]:
        """Edge queries take vectors: an example given as an item id becomes its stored vector."""
        if not isinstance(example, str):
            return example.astype(np.float32).tolist()
        if (example, using) not in vectors:
            found = self._shard().retrieve([point_id(example)], False, True)
            if not found:  # deleted since the caller looked it up
                raise ItemNotFound(f"no item with id {example!r}")
            vectors.update(((example, name), values) for name, values in found[0].vector.items())
        return vectors[(example, using)]

    # -- the folder -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _call(self) -> Iterator[None]:
        """Serialise calls; Edge reports an engine failure (a segment it cannot read) as a bare
        ``Exception``: the files are damaged."""
        try:
            with self._lock:
                yield
        except Exception as e:
            if type(e) is not Exception:
                raise
            raise self._damaged(e) from e

    def _ensure_room(self, extra: int = 0) -> None:
        ensure_free_space(self.folder.path, MIN_FREE + extra, f"writing to the embedded store ({self.collection!r})")

    def _physical(self, collection: str) -> str:
        return self.folder.aliases.get(collection, collection)

    def _described(self, collection: str) -> dict:
        if not self._exists(collection):
            raise self._missing_collection()
        try:
            return json.loads((self.folder.directory(collection) / COLLECTION_FILE).read_text())
        except (OSError, ValueError) as e:
            raise StoreDamaged(
                f"collection {collection!r}: {COLLECTION_FILE} is unreadable ({e}); {DAMAGED_HINT}"
            ) from e

    def _shard(self) -> edge.EdgeShard:
        physical = self._physical(self.collection)
        if physical not in self.folder.shards:
            self._described(physical)  # "does not exist yet" for a missing collection
            if on_tmpfs(self.folder.path):  # there, loading fills the files' holes (ext4 leaves them)
                holes = unallocated_bytes(self.folder.directory(physical))
                what = f"opening collection {physical!r} (on tmpfs)"
                ensure_free_space(self.folder.path, MIN_FREE + holes, what, StoreOutOfSpace)
            shard = edge.EdgeShard.load(str(self.folder.directory(physical) / SHARD))
            self._check_floor(physical, shard)
            self.folder.shards[physical] = shard
        return self.folder.shards[physical]

    def _commit(self, shard: edge.EdgeShard, *, due_only: bool = False) -> None:
        """Sync a write, then record the count as the floor. Edge writes its log through memory maps
        that only ``flush`` syncs, while the floor file is synced at once: recorded first, a power
        cut could leave a floor above what survived, and a sound store refused as damaged.
        ``due_only``: only when `writing_behind`'s interval has passed since the last sync."""
        if due_only and time.monotonic() - self._synced_at < self._sync_every_s:
            return
        shard.flush()
        self._write_floor(shard.count(edge.CountRequest(exact=True)))
        self._synced_at = time.monotonic()

    def _write_floor(self, count: int) -> None:
        _write_json(self.folder.directory(self._physical(self.collection)) / FLOOR_FILE, {"at_least": count})

    def _check_floor(self, collection: str, shard: edge.EdgeShard) -> None:
        """A shard that lost points (a lost id mapping, a missing segment) loads without complaint
        and answers from what is left: compare with the count recorded after the last write."""
        path = self.folder.directory(collection) / FLOOR_FILE
        if not path.is_file():
            return
        floor = json.loads(path.read_text())["at_least"]
        count = shard.count(edge.CountRequest(exact=True))
        if count < floor:
            shard.close()
            raise StoreDamaged(
                f"collection {collection!r} holds {count} items but held at least {floor} after its last write; "
                f"{DAMAGED_HINT}"
            )


def _filter(search_filter: SearchFilter) -> edge.Filter | None:
    must: list[Any] = []
    if search_filter.categories:
        must.append(edge.FieldCondition(CATEGORY, match=edge.MatchAny(list(search_filter.categories))))
    if search_filter.image_source is not None:
        must.append(edge.FieldCondition(IMAGE_SOURCE, match=edge.MatchValue(search_filter.image_source)))
    for key, bounds in search_filter.range_keys():
        must.append(edge.FieldCondition(key, range=edge.RangeFloat(**dataclasses.asdict(bounds))))
    must += [edge.Filter(should=_metadata_conditions(match)) for match in metadata_matches(search_filter)]
    must_not: list[Any] = []
    if search_filter.exclude:
        must_not.append(edge.HasIdCondition({point_id(i) for i in search_filter.exclude}))
    if search_filter.exclude_sha256:
        must_not.append(edge.FieldCondition(SHA256, match=edge.MatchAny(list(search_filter.exclude_sha256))))
    if not must and not must_not:
        return None
    return edge.Filter(must=must or None, must_not=must_not or None)


def _metadata_conditions(match: MetadataMatch) -> list[Any]:
    conditions = [edge.FieldCondition(match.key, match=edge.MatchAny(match.texts))]
    if match.integers:
        conditions.append(edge.FieldCondition(match.key, match=edge.MatchAny(match.integers)))
    for value in match.booleans:
        conditions.append(edge.FieldCondition(BOOLEANS, match=edge.MatchValue(_boolean_keyword(match.key, value))))
    return conditions


def _with_booleans(payload: dict) -> dict:
    """The payload plus a keyword per boolean in it, under `BOOLEANS`."""
    keywords = [_boolean_keyword(path, value) for path, value in _booleans(payload)]
    return {**payload, BOOLEANS: keywords} if keywords else payload


def _booleans(value: Any, path: str = "") -> Iterator[tuple[str, bool]]:
    if isinstance(value, bool):
        yield path, value
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield from _booleans(inner, f"{path}.{key}" if path else key)
    elif isinstance(value, list):  # as in Qdrant: a list matches when any element does
        for inner in value:
            yield from _booleans(inner, path)


def _boolean_keyword(path: str, value: bool) -> str:
    return f"{path}={'true' if value else 'false'}"


def _record(point: Any) -> Record:
    payload = point.payload or {}
    if BOOLEANS in payload:
        payload = {k: v for k, v in payload.items() if k != BOOLEANS}
    return Record(str(point.id), payload, point.vector or {}, float(getattr(point, "score", 0.0) or 0.0))


def _write_json(path: Path, data: Any) -> None:
    write_atomically(path, json.dumps(data).encode())
