"""B2 probe: Qdrant Edge (qdrant-edge-py, Qdrant's engine in-process) on the B2 data, vs numpy.

The candidate to replace qdrant-client's embedded mode (a pure-Python scan). Not a dependency
of the project yet: ``.venv/bin/pip install qdrant-edge-py==0.9.0`` first. Same synthetic data,
queries, k and numpy baseline as `bench.b2_search`; reports p50, recall@10 against exact search,
upsert, HNSW build and reopen times.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid

import numpy as np

from bench.b2_search import DIM, QUERIES, K, numpy_search, synthetic
from bench.common import percentiles, report, time_calls

BATCH = 2000


def main() -> None:
    try:
        import qdrant_edge as edge
    except ImportError:
        raise SystemExit("install the candidate first: .venv/bin/pip install qdrant-edge-py==0.9.0") from None
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--hnsw-ef", type=int, default=256)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors, categories = synthetic(args.points, rng)
    queries = rng.standard_normal((QUERIES, DIM), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    directory = tempfile.mkdtemp()
    config = edge.EdgeConfig(vectors={"embedding": edge.EdgeVectorParams(size=DIM, distance=edge.Distance.Cosine)})
    shard = edge.EdgeShard.create(directory, config)
    shard.update(edge.UpdateOperation.create_field_index("category", edge.PayloadSchemaType.Keyword))
    started = time.perf_counter()
    for start in range(0, args.points, BATCH):
        points = [
            edge.Point(str(uuid.uuid4()), {"embedding": vectors[j].tolist()}, {"category": categories[j], "row": j})
            for j in range(start, min(args.points, start + BATCH))
        ]
        shard.update(edge.UpdateOperation.upsert_points(points))
    upsert_s = time.perf_counter() - started
    started = time.perf_counter()
    shard.optimize()
    build_s = time.perf_counter() - started

    def request(i: int, search_filter):
        return edge.QueryRequest(
            limit=K,
            query=edge.Query.Nearest(queries[i % QUERIES].tolist(), using="embedding"),
            filter=search_filter,
            with_payload=True,
            params=edge.SearchParams(hnsw_ef=args.hnsw_ef),
        )

    figures = []
    for label, category in (("unfiltered", None), ("category_1_of_30", "c3"), ("rare_1pct", "rare")):
        condition = edge.FieldCondition("category", match=edge.MatchValue(category)) if category else None
        search_filter = edge.Filter(must=[condition]) if condition else None
        mask = None if category is None else categories == category
        edge_p = percentiles(time_calls(lambda i, f=search_filter: shard.query(request(i, f)), QUERIES))
        numpy_p = percentiles(time_calls(lambda i, m=mask: numpy_search(vectors, queries[i % QUERIES], m), QUERIES))
        recall = []
        for i in range(QUERIES):
            exact = numpy_search(vectors, queries[i], mask)
            rows = np.flatnonzero(mask)[exact] if mask is not None else exact
            found = {point.payload["row"] for point in shard.query(request(i, search_filter))}
            recall.append(len(found & set(rows.tolist())) / K)
        figures.append(
            {
                "figure": f"edge_search_{label}",
                "points": args.points,
                "edge_p50_ms": edge_p["p50"],
                "edge_p95_ms": edge_p["p95"],
                "numpy_p50_ms": numpy_p["p50"],
                "ratio_p50": round(edge_p["p50"] / numpy_p["p50"], 2),
                "recall_at_10": round(float(np.mean(recall)), 3),
                "hnsw_ef": args.hnsw_ef,
                "goal": "<=2 (filtered, 100k)",
            }
        )
    shard.close()
    started = time.perf_counter()
    edge.EdgeShard.load(directory).close()
    figures.append(
        {
            "figure": "edge_upsert_build_reopen",
            "points": args.points,
            "upsert_s": round(upsert_s, 1),
            "hnsw_build_s": round(build_s, 1),
            "reopen_s": round(time.perf_counter() - started, 2),
        }
    )
    report("b2_edge_probe", figures)


if __name__ == "__main__":
    main()
