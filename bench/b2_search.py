"""B2: search latency in the store vs numpy brute force over the same (filtered) vectors.

Synthetic unit vectors (512 dims), 30 categories plus a rare one holding 1 % of the points, k=10.
Goal in embedded mode at 100k points: filtered p50 <= 2x numpy. Also reports the time to reopen
the embedded store (what a service restart pays).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from bench.common import percentiles, report, time_calls
from lookalike.settings import Settings
from lookalike.store import SearchFilter, StoredItem, VectorStore, open_embedded

DIM, K, QUERIES, UPSERT_BATCH = 512, 10, 30, 2000
MODEL = "bench@synthetic"


def synthetic(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    vectors = rng.standard_normal((n, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    categories = np.array([f"c{i % 30}" for i in range(n)], dtype=object)
    categories[rng.choice(n, n // 100, replace=False)] = "rare"
    return vectors, categories


def numpy_search(vectors: np.ndarray, query: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    candidates = vectors if mask is None else vectors[mask]
    scores = candidates @ query
    top = np.argpartition(-scores, K)[:K]
    return top[np.argsort(-scores[top])]


def store_query(store: VectorStore, queries: np.ndarray, search_filter: SearchFilter, i: int) -> None:
    store.similar(queries[i % QUERIES], search_filter, K)


def numpy_query(vectors: np.ndarray, queries: np.ndarray, mask: np.ndarray | None, i: int) -> None:
    numpy_search(vectors, queries[i % QUERIES], mask)


def bench_size(n: int, rng: np.random.Generator, engine: str) -> list[dict]:
    vectors, categories = synthetic(n, rng)
    queries = rng.standard_normal((QUERIES, DIM), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q"
        store = VectorStore(open_embedded(path, engine), "bench", embedded=True)
        store.ensure_collection(DIM, MODEL)
        started = time.perf_counter()
        for start in range(0, n, UPSERT_BATCH):
            items = [
                StoredItem(f"i{j}", categories[j], "x.jpg", "0", MODEL)
                for j in range(start, min(n, start + UPSERT_BATCH))
            ]
            store.upsert(items, vectors[start : start + UPSERT_BATCH])
        store.optimize()  # what ingest does after a bulk load (builds HNSW on Edge)
        upsert_s = time.perf_counter() - started
        for label, category in (("unfiltered", None), ("category_1_of_30", "c3"), ("rare_1pct", "rare")):
            search_filter = SearchFilter(categories=[category] if category else ())
            mask = None if category is None else categories == category
            store_s = time_calls(partial(store_query, store, queries, search_filter), QUERIES)
            numpy_s = time_calls(partial(numpy_query, vectors, queries, mask), QUERIES)
            store_p, numpy_p = percentiles(store_s), percentiles(numpy_s)
            figures.append(
                {
                    "figure": f"search_{label}",
                    "points": n,
                    "store_p50_ms": store_p["p50"],
                    "store_p95_ms": store_p["p95"],
                    "numpy_p50_ms": numpy_p["p50"],
                    "numpy_p95_ms": numpy_p["p95"],
                    "ratio_p50": round(store_p["p50"] / numpy_p["p50"], 1),
                    "goal": "<=2 (filtered, 100k)",
                    "engine": engine,
                }
            )
        store.close()
        started = time.perf_counter()
        reopened = VectorStore(open_embedded(path, engine), "bench", embedded=True)
        reopen_s = time.perf_counter() - started
        reopened.close()
    figures.append(
        {
            "figure": "embedded_upsert_and_reopen",
            "points": n,
            "upsert_s": round(upsert_s, 1),
            "reopen_s": round(reopen_s, 2),
        }
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--engine", default=Settings().embedded_engine, choices=["qdrant-client", "edge"])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    figures = []
    for n in (int(size) for size in args.sizes.split(",")):
        figures += bench_size(n, rng, args.engine)
    report(f"b2_search_{args.engine}", figures)


if __name__ == "__main__":
    main()
