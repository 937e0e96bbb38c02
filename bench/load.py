"""Bounded load run on loopback: N concurrent clients for T seconds against gunicorn, mixed
by-id (50 %), filtered by-id (25 %) and upload (25 %) searches. Reports errors, p50/p95/p99,
and the service's resident memory as the run goes (a leak shows as growth after the warm-up).

A locust-style headless run with plain threads and httpx (no extra dependency): every client
stops after ``--seconds`` or ``--max-requests``, whichever comes first. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx

from bench.common import percentiles, report, spread_sample
from bench.server import memory_mib, running_service
from ingest.pipeline import IngestOptions, ingest
from ingest.report import ErrorReport
from lookalike.catalogue import read_catalogue
from lookalike.runtime import load_encoder
from lookalike.settings import Settings
from lookalike.store import VectorStore


def client_loop(
    url: str,
    ids: list[str],
    categories: dict[str, str],
    photos: list[bytes],
    deadline: float,
    max_requests: int,
    seed: int,
) -> list[tuple[str, int, float]]:
    rng = random.Random(seed)
    outcomes = []
    with httpx.Client(base_url=url, timeout=120) as client:
        while time.perf_counter() < deadline and len(outcomes) < max_requests:
            roll, item_id = rng.random(), rng.choice(ids)
            started = time.perf_counter()
            try:
                if roll < 0.5:
                    kind, response = "by_id", client.get(f"/v1/items/{item_id}/similar", params={"k": 10})
                elif roll < 0.75:
                    params = {"k": 10, "category": categories[item_id]}
                    kind, response = "filtered", client.get(f"/v1/items/{item_id}/similar", params=params)
                else:
                    files = {"image": ("q.jpg", rng.choice(photos))}
                    kind, response = "upload", client.post("/v1/search", params={"k": 10}, files=files)
                status = response.status_code
            except httpx.HTTPError:
                kind, status = "transport", 0
            outcomes.append((kind, status, time.perf_counter() - started))
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-requests", type=int, default=2000, help="per client")
    parser.add_argument("--limit", type=int, default=600, help="catalogue items to serve")
    args = parser.parse_args()
    settings = Settings()
    catalogue = read_catalogue(settings.catalogue_source())
    catalogue.items[:] = spread_sample(catalogue.items, args.limit)
    encoder = load_encoder(settings)
    ids = [item.id for item in catalogue.items]
    categories = {item.id: item.category for item in catalogue.items}
    photos = [item.path.read_bytes() for item in catalogue.items[:30]]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q"
        store = VectorStore.from_settings(settings.model_copy(update={"qdrant_path": path}))
        store.ensure_collection(encoder.dim, encoder.identity)
        ingest(
            catalogue, encoder, store, ErrorReport.open(Path(tmp) / "e.jsonl"), IngestOptions(workers=0, progress=False)
        )
        store.close()
        with running_service({"QDRANT_PATH": str(path)}) as (url, _, service):
            started = time.perf_counter()
            deadline = started + args.seconds
            memory = [memory_mib(service.pid)["rss"]]
            with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
                futures = [
                    pool.submit(client_loop, url, ids, categories, photos, deadline, args.max_requests, seed)
                    for seed in range(args.clients)
                ]
                while concurrent.futures.wait(futures, timeout=args.seconds / 10).not_done:
                    memory.append(memory_mib(service.pid)["rss"])
                outcomes = [o for future in futures for o in future.result()]
            memory.append(memory_mib(service.pid)["rss"])
            elapsed = time.perf_counter() - started
    by_kind: dict[str, list[float]] = defaultdict(list)
    errors = 0
    for kind, status, seconds in outcomes:
        by_kind[kind].append(seconds)
        errors += status != 200
    figures = [
        {
            "figure": "load_total",
            "clients": args.clients,
            "seconds": round(elapsed, 1),
            "requests": len(outcomes),
            "errors": errors,
            "rps": round(len(outcomes) / elapsed, 1),
            "model": encoder.identity.split("@")[0],
            "goal": "errors=0",
        },
        {
            "figure": "load_memory",
            "rss_mib_ready": round(memory[0]),
            "rss_mib_after_a_tenth": round(memory[min(1, len(memory) - 1)]),
            "rss_mib_end": round(memory[-1]),
            "samples": [round(m) for m in memory],
            "goal": "flat after the first tenth of the run (no leak)",
        },
    ]
    for kind, samples in sorted(by_kind.items()):
        figures.append({"figure": f"load_{kind}", "requests": len(samples), **percentiles(samples)})
    report("load", figures)


if __name__ == "__main__":
    main()
