"""B4: time from process start to /readyz 200, and memory, with a large collection.

Goal: <= 2 s and RSS <= model + 2x the raw vectors. Synthetic vectors stand in for 100k items
(embedded mode); the model is the configured one (MODEL_* settings), served by each runtime in
turn (ENCODER_RUNTIME torch, then onnx: the baseline and the candidate in the same run), three
starts each (the median is the figure). The ONNX export is made before the clock starts, as
`finetune` or `finetune.export` would have. Memory is the PSS of gunicorn's master and worker
(pages shared after the fork counted once), with each process's RSS beside it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np

from bench.common import report, unit_rows
from bench.server import memory_mib, running_service
from lookalike.colour import DIM as COLOUR_DIM
from lookalike.encoder import ImageEncoder
from lookalike.looks import Look
from lookalike.onnx_encoder import OnnxEncoder, export_directory, variant_file, variant_of
from lookalike.points import StoredItem
from lookalike.settings import Settings
from lookalike.store import open_embedded

BATCH = 2000


def build_store(path: Path, settings: Settings, dim: int, identity: str, items: int) -> None:
    """``items`` synthetic items (both named vectors), indexed as ingest leaves a collection."""
    rng = np.random.default_rng(0)
    store = open_embedded(path, settings.embedded_engine, settings.collection)
    store.ensure_collection(dim, identity)
    for start in range(0, items, BATCH):
        count = min(BATCH, items - start)
        shapes, paints = unit_rows(rng, count, dim), unit_rows(rng, count, COLOUR_DIM, colour=True)
        looks = [Look(shape, paint) for shape, paint in zip(shapes, paints, strict=True)]
        stored = [StoredItem(f"i{start + j}", f"c{j % 30}", "x.jpg", "0", identity) for j in range(count)]
        store.upsert(stored, looks)
    store.bound_to(store.resolve()).optimize()
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--runtimes", default="torch,onnx", help="ENCODER_RUNTIME values to start, in turn")
    parser.add_argument("--starts", type=int, default=3, help="starts per runtime; the median is the figure")
    parser.add_argument("--store", type=Path, help="keep the synthetic store here and reuse it (default: a temp dir)")
    args = parser.parse_args()
    settings = Settings()
    encoder = ImageEncoder.from_settings(settings.model_copy(update={"precision": "fp32"}))
    # exported now, not at start; with PRECISION=int8 (onnx only) the store holds the int8 model's vectors
    exported = OnnxEncoder.from_settings(settings.model_copy(update={"encoder_runtime": "onnx"}))
    model_mib = {
        "torch": sum(p.numel() * p.element_size() for p in encoder.visual.parameters()) / 2**20,
        "onnx": variant_file(export_directory(settings), variant_of(settings.precision)).stat().st_size / 2**20,
    }
    vectors_mib = args.items * (encoder.dim + COLOUR_DIM) * 4 / 2**20  # both named vectors, float32
    with tempfile.TemporaryDirectory() as tmp:
        path = args.store or Path(tmp) / "q"
        if not path.exists():
            build_store(path, settings, encoder.dim, exported.identity, args.items)
        figures = []
        for runtime in args.runtimes.split(","):
            env = {"QDRANT_PATH": str(path), "EMBEDDED_ENGINE": settings.embedded_engine, "ENCODER_RUNTIME": runtime}
            starts = []
            for _ in range(args.starts):
                with running_service(env) as (_, ready_s, process):
                    memory = memory_mib(process.pid)
                starts.append(ready_s)
            goal_mib = model_mib[runtime] + 2 * vectors_mib
            figures += [
                {
                    "figure": "start_to_ready_s",
                    "runtime": runtime,
                    "value": round(statistics.median(starts), 2),
                    "starts": [round(t, 2) for t in starts],
                    "items": args.items,
                    "goal": "<=2",
                    "engine": settings.embedded_engine,
                },
                {
                    "figure": "memory_mib",
                    "runtime": runtime,
                    "value": round(memory["pss"], 1),
                    "rss_sum": round(memory["rss"], 1),
                    "per_process_rss": memory["per_process"],
                    "model_mib": round(model_mib[runtime], 1),
                    "raw_vectors_mib": round(vectors_mib, 1),
                    "goal_mib": round(goal_mib, 1),
                    "ratio_to_goal": round(memory["pss"] / goal_mib, 2),
                },
            ]
    report("b4_coldstart", figures)


if __name__ == "__main__":
    main()
