"""B2: search latency in the store vs numpy brute force over the same (filtered) vectors.

Two numpy baselines: "numpy" finds the category's rows and gathers them inside every call (what a
plain array must do per query); "numpy_subset" scores a copy of the category's rows gathered
before timing (the best a plain array can do, with the filter paid in advance).

Synthetic unit vectors (512 dims, plus a 512-bin colour vector; uniform, and clustered like real
embeddings), 30 categories plus a rare one
holding 1 % of the points, k=10. Goal in embedded mode at 100k points: filtered p50 <= 2x numpy.
Also the fused shape+colour query (colour_weight 0.2) against numpy's exhaustive weighted sum,
recall@10 against the exact answer for every figure (Edge's HNSW and the fusion pool are
approximate), and the time to reopen the embedded store (what a service restart pays).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from bench.common import percentiles, report, time_calls, unit_rows
from lookalike.colour import DIM as COLOUR_DIM
from lookalike.looks import Look
from lookalike.points import StoredItem
from lookalike.queries import Ranking, SearchFilter
from lookalike.settings import Settings
from lookalike.store import VectorStore, open_embedded

DIM, K, QUERIES, UPSERT_BATCH = 512, 10, 30, 2000
FUSED_WEIGHT = 0.2
MODEL = "bench@synthetic"


CLUSTERS = 300


def synthetic(n: int, rng: np.random.Generator, clustered: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Uniform random unit vectors (HNSW's worst case: no structure at all), or ``clustered``:
    around 300 random centres at cosine ~0.78, closer to how real embeddings are distributed."""
    vectors, colours = unit_rows(rng, n, DIM), unit_rows(rng, n, COLOUR_DIM, colour=True)
    if clustered:
        centres = unit_rows(rng, CLUSTERS, DIM)
        noisy = centres[rng.integers(0, CLUSTERS, n)] + 0.8 * vectors
        vectors = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    categories = np.array([f"c{i % 30}" for i in range(n)], dtype=object)
    categories[rng.choice(n, n // 100, replace=False)] = "rare"
    return vectors, colours, categories


def numpy_search(
    vectors: np.ndarray, colours: np.ndarray, query: Look, mask: np.ndarray | None, weight: float
) -> np.ndarray:
    """Exact top-k indices: the baseline's work is the same (filtered, fused) scoring, done exhaustively."""
    rows = slice(None) if mask is None else np.flatnonzero(mask)  # a slice: no copy when unfiltered
    scores = vectors[rows] @ query.embedding
    if weight:
        scores = (1 - weight) * scores + weight * (colours[rows] @ query.colour)
    top = np.argpartition(-scores, K)[:K]
    top = top[np.argsort(-scores[top])]
    return top if mask is None else rows[top]


def subset_search(subset: tuple[np.ndarray, np.ndarray, np.ndarray], query: Look, weight: float) -> np.ndarray:
    """Exact top-k over rows gathered in advance: (row numbers, their vectors, their colours)."""
    rows, shapes, paints = subset
    scores = shapes @ query.embedding
    if weight:
        scores = (1 - weight) * scores + weight * (paints @ query.colour)
    top = np.argpartition(-scores, K)[:K]
    return rows[top[np.argsort(-scores[top])]]


def store_query(store: VectorStore, queries: list[Look], search_filter: SearchFilter, weight: float, i: int) -> list:
    return store.similar(queries[i % QUERIES], search_filter, Ranking(K, colour_weight=weight))


def recall_at_k(store_ids: list[list[str]], exact: list[np.ndarray]) -> float:
    found = [len({f"i{j}" for j in truth} & set(ids)) / K for ids, truth in zip(store_ids, exact, strict=True)]
    return round(float(np.mean(found)), 3)


def bench_size(n: int, rng: np.random.Generator, engine: str, clustered: bool = False) -> list[dict]:
    vectors, colours, categories = synthetic(n, rng, clustered)
    shapes, paints = unit_rows(rng, QUERIES, DIM), unit_rows(rng, QUERIES, COLOUR_DIM, colour=True)
    if clustered:  # queries near stored items, as a photo of a catalogue-like product would be
        near = vectors[rng.integers(0, n, QUERIES)] + 0.5 * shapes  # cosine ~0.9 to that item
        shapes = near / np.linalg.norm(near, axis=1, keepdims=True)
    queries = [Look(shape, paint) for shape, paint in zip(shapes, paints, strict=True)]
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q"
        store = open_embedded(path, engine, "bench")
        store.ensure_collection(DIM, MODEL)
        started = time.perf_counter()
        for start in range(0, n, UPSERT_BATCH):
            items = [
                StoredItem(f"i{j}", categories[j], "x.jpg", "0", MODEL)
                for j in range(start, min(n, start + UPSERT_BATCH))
            ]
            looks = [Look(vectors[j], colours[j]) for j in range(start, start + len(items))]
            store.upsert(items, looks)
        store.optimize()  # what ingest does after a bulk load (builds HNSW on Edge)
        upsert_s = time.perf_counter() - started
        cases = (
            ("unfiltered", None, 0.0),
            ("category_1_of_30", "c3", 0.0),
            ("rare_1pct", "rare", 0.0),
            (f"fused_colour_{FUSED_WEIGHT}", None, FUSED_WEIGHT),
            (f"fused_colour_{FUSED_WEIGHT}_category_1_of_30", "c3", FUSED_WEIGHT),
        )
        for label, category, weight in cases:
            search_filter = SearchFilter(categories=[category] if category else ())
            mask = None if category is None else categories == category
            store_s = time_calls(partial(store_query, store, queries, search_filter, weight), QUERIES)
            exact_answers = [numpy_search(vectors, colours, q, mask, weight) for q in queries]
            numpy_s = time_calls(lambda i: numpy_search(vectors, colours, queries[i % QUERIES], mask, weight), QUERIES)  # noqa: B023
            rows = np.arange(n) if mask is None else np.flatnonzero(mask)
            subset = (rows, np.ascontiguousarray(vectors[rows]), np.ascontiguousarray(colours[rows]))
            subset_s = time_calls(lambda i: subset_search(subset, queries[i % QUERIES], weight), QUERIES)  # noqa: B023
            found = [[h.item.id for h in store_query(store, queries, search_filter, weight, i)] for i in range(QUERIES)]
            store_p, numpy_p, subset_p = percentiles(store_s), percentiles(numpy_s), percentiles(subset_s)
            figures.append(
                {
                    "figure": f"search_{label}",
                    "points": n,
                    "data": "clustered" if clustered else "uniform",
                    "store_p50_ms": store_p["p50"],
                    "store_p95_ms": store_p["p95"],
                    "numpy_p50_ms": numpy_p["p50"],
                    "numpy_p95_ms": numpy_p["p95"],
                    "ratio_p50": round(store_p["p50"] / numpy_p["p50"], 1),
                    "numpy_subset_p50_ms": subset_p["p50"],
                    "ratio_to_subset_p50": round(store_p["p50"] / subset_p["p50"], 1),
                    "recall_at_10": recall_at_k(found, exact_answers),
                    "goal": "<=2 (filtered, 100k)",
                    "engine": engine,
                }
            )
        store.close()
        started = time.perf_counter()
        reopened = open_embedded(path, engine, "bench")
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
    parser.add_argument("--sizes", default="10000,100000", help="uniform random vectors (HNSW's worst case)")
    parser.add_argument("--clustered-sizes", default="100000", help="clustered vectors, like real embeddings")
    parser.add_argument("--engine", default=Settings().embedded_engine, choices=["qdrant-client", "edge"])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    figures = []
    for n in (int(size) for size in args.sizes.split(",") if size):
        figures += bench_size(n, rng, args.engine)
    for n in (int(size) for size in args.clustered_sizes.split(",") if size):
        figures += bench_size(n, rng, args.engine, clustered=True)
    report(f"b2_search_{args.engine}", figures)


if __name__ == "__main__":
    main()
