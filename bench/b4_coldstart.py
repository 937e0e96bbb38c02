"""B4: time from process start to /readyz 200, and memory, with a large collection.

Goal: <= 2 s and RSS <= model + 2x the raw vectors. Synthetic vectors stand in for 100k items
(embedded mode); the model is the configured one (MODEL_* settings).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from bench.common import report, unit_rows
from bench.server import rss_mib, running_service
from lookalike.colour import DIM as COLOUR_DIM
from lookalike.encoder import ImageEncoder
from lookalike.looks import Look
from lookalike.points import StoredItem
from lookalike.settings import Settings
from lookalike.store import open_embedded

BATCH = 2000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000)
    args = parser.parse_args()
    settings = Settings()
    encoder = ImageEncoder.from_settings(settings)
    model_mib = sum(p.numel() * p.element_size() for p in encoder.visual.parameters()) / 2**20
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q"
        store = open_embedded(path, settings.embedded_engine, settings.collection)
        store.ensure_collection(encoder.dim, encoder.identity)
        for start in range(0, args.items, BATCH):
            count = min(BATCH, args.items - start)
            looks = [
                Look(shape, paint)
                for shape, paint in zip(
                    unit_rows(rng, count, encoder.dim), unit_rows(rng, count, COLOUR_DIM, colour=True), strict=True
                )
            ]
            items = [StoredItem(f"i{start + j}", f"c{j % 30}", "x.jpg", "0", encoder.identity) for j in range(count)]
            store.upsert(items, looks)
        store.ensure_collection(encoder.dim, encoder.identity)
        store.bound_to(store.resolve()).optimize()
        store.close()
        env = {"QDRANT_PATH": str(path), "EMBEDDED_ENGINE": settings.embedded_engine}
        with running_service(env) as (_, ready_s, process):
            rss = rss_mib(process.pid)
    vectors_mib = args.items * (encoder.dim + COLOUR_DIM) * 4 / 2**20  # both named vectors, float32
    report(
        "b4_coldstart",
        [
            {
                "figure": "start_to_ready_s",
                "value": round(ready_s, 2),
                "items": args.items,
                "goal": "<=2",
                "engine": settings.embedded_engine,
            },
            {
                "figure": "rss_mib",
                "value": round(rss, 1),
                "model_mib": round(model_mib, 1),
                "raw_vectors_mib": round(vectors_mib, 1),
                "goal_mib": round(model_mib + 2 * vectors_mib, 1),
            },
        ],
    )


if __name__ == "__main__":
    main()
