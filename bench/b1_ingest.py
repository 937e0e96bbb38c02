"""B1: whole ingest pipeline images/s vs the encoder's forward pass alone and vs a naive loop.

Goal: pipeline >= 0.85x forward-only (same batch size, pre-decoded tensors); >= 4x the naive
one-image-at-a-time loop (decode -> encode -> upsert). Runs on the shared catalogue.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import report, spread_sample
from ingest.pipeline import IngestOptions, ingest
from ingest.report import ErrorReport
from lookalike.catalogue import read_catalogue
from lookalike.device import default_workers
from lookalike.images import decode_image, read_bytes, sha256_hex
from lookalike.looks import looks_of
from lookalike.points import StoredItem
from lookalike.queries import NearDuplicateRule
from lookalike.runtime import load_encoder
from lookalike.settings import Settings
from lookalike.store import VectorStore


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=640, help="catalogue items to ingest")
    parser.add_argument("--naive-limit", type=int, default=96)
    args = parser.parse_args()
    settings = Settings()
    catalogue = read_catalogue(settings.catalogue_source())
    items = spread_sample(catalogue.items, args.limit)
    catalogue.items[:] = items
    encoder = load_encoder(settings)
    device = encoder.placement.device
    batch = settings.ingest_batch_size(device.type)
    workers = default_workers(device) if settings.decode_workers is None else settings.decode_workers

    with tempfile.TemporaryDirectory() as tmp:
        store = VectorStore.from_settings(settings.model_copy(update={"qdrant_path": Path(tmp) / "q"}))
        store.ensure_collection(encoder.dim, encoder.identity)
        report_file = ErrorReport.open(Path(tmp) / "errors.jsonl")
        options = IngestOptions(
            batch_size=batch,
            workers=workers,
            max_pixels=settings.max_image_pixels,
            near_duplicates=NearDuplicateRule.from_settings(settings),  # as `python -m ingest` runs it
            progress=False,
        )
        summary = ingest(catalogue, encoder, store, report_file, options)
        pipeline = summary.ingested / summary.seconds

        images = [decode_image(read_bytes(i.path), 10**8) for i in items[: batch * 4]]
        pixels = np.stack([np.asarray(encoder.worker_preprocess(image)) for image in images])
        started = time.perf_counter()
        for start in range(0, len(pixels), batch):
            encoder.embed_batch(pixels[start : start + batch])
        forward = len(pixels) / (time.perf_counter() - started)

        naive_items = items[: args.naive_limit]
        started = time.perf_counter()
        for item in naive_items:
            data = read_bytes(item.path)
            looks = looks_of(encoder, [decode_image(data, settings.max_image_pixels)])
            stored = StoredItem(item.id + "-naive", item.category, item.image, sha256_hex(data), encoder.identity)
            store.upsert([stored], looks)
        naive = len(naive_items) / (time.perf_counter() - started)
        store.close()

    report(
        "b1_ingest",
        [
            {
                "figure": "pipeline_images_per_s",
                "value": round(pipeline, 1),
                "model": encoder.identity.split("@")[0],
                "batch": batch,
                "workers": workers,
                "items": summary.ingested,
            },
            {
                "figure": "vs_forward_only",
                "value": round(pipeline / forward, 3),
                "baseline_images_per_s": round(forward, 1),
                "goal": ">=0.85",
            },
            {
                "figure": "vs_naive_loop",
                "value": round(pipeline / naive, 2),
                "baseline_images_per_s": round(naive, 1),
                "goal": ">=4",
            },
        ],
    )


if __name__ == "__main__":
    main()
