"""B3: HTTP through gunicorn on loopback: by-id and upload search at 1, 4 and 16 clients.

Goals: by-id p50 <= store query + 3 ms; upload p50 <= 1.25x decode + encode of one image. Both
baselines are measured in the same run, in-process, with the same model and store, for each
ENCODER_RUNTIME in turn (torch, then onnx: the same collection, as fp32 vectors share one identity).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import tempfile
import time
from functools import partial
from pathlib import Path

import httpx

from bench.common import percentiles, report, spread_sample, time_calls
from bench.server import running_service
from ingest.pipeline import IngestOptions, ingest
from ingest.report import ErrorReport
from lookalike.catalogue import read_catalogue
from lookalike.images import decode_image
from lookalike.looks import looks_of
from lookalike.queries import Ranking, SearchFilter
from lookalike.runtime import load_encoder
from lookalike.settings import Settings
from lookalike.store import VectorStore

REQUESTS_PER_CLIENT = 30


def load(url: str, clients: int, request) -> dict:
    def one_client(index: int) -> list[float]:
        with httpx.Client(base_url=url, timeout=60) as client:
            samples = []
            for i in range(REQUESTS_PER_CLIENT):
                started = time.perf_counter()
                response = request(client, index * REQUESTS_PER_CLIENT + i)
                response.raise_for_status()
                samples.append(time.perf_counter() - started)
            return samples

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        samples = [s for result in pool.map(one_client, range(clients)) for s in result]
    return {**percentiles(samples), "rps": round(len(samples) / (time.perf_counter() - started), 1)}


def by_id(ids: list[str], client: httpx.Client, i: int) -> httpx.Response:
    return client.get(f"/v1/items/{ids[i % len(ids)]}/similar", params={"k": 10})


def by_upload(photos: list[bytes], client: httpx.Client, i: int) -> httpx.Response:
    return client.post("/v1/search", params={"k": 10}, files={"image": ("q.jpg", photos[i % len(photos)])})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--runtimes", default="torch,onnx", help="ENCODER_RUNTIME values to serve with, in turn")
    args = parser.parse_args()
    settings = Settings()
    catalogue = read_catalogue(settings.catalogue_source())
    catalogue.items[:] = spread_sample(catalogue.items, args.limit)
    encoders = {
        runtime: load_encoder(settings.model_copy(update={"encoder_runtime": runtime}))
        for runtime in args.runtimes.split(",")
    }
    photos = [item.path.read_bytes() for item in catalogue.items[:20]]
    ids = [item.id for item in catalogue.items]
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {"QDRANT_PATH": str(Path(tmp) / "q"), "INGEST_ERROR_REPORT": str(Path(tmp) / "e.jsonl")}
        store = VectorStore.from_settings(settings.model_copy(update={"qdrant_path": Path(env["QDRANT_PATH"])}))
        indexer = next(iter(encoders.values()))  # torch and onnx fp32 share one identity: one collection for both
        store.ensure_collection(indexer.dim, indexer.identity)
        ingest(
            catalogue, indexer, store, ErrorReport.open(Path(tmp) / "e.jsonl"), IngestOptions(workers=0, progress=False)
        )
        ranking = Ranking(10, colour_weight=settings.colour_weight)  # as the service ranks by default
        store_s = time_calls(lambda i: store.similar(ids[i % len(ids)], SearchFilter(), ranking), 50)
        store.close()
        store_p50 = percentiles(store_s)["p50"]
        for runtime, encoder in encoders.items():
            encode_s = time_calls(lambda i: looks_of(encoder, [decode_image(photos[i % 20], 10**8)]), 30)  # noqa: B023
            encode_p50 = percentiles(encode_s)["p50"]
            with running_service({**env, "ENCODER_RUNTIME": runtime}) as (url, _, _):
                for clients in (1, 4, 16):
                    figures.append(
                        {
                            "figure": "http_by_id",
                            "runtime": runtime,
                            "clients": clients,
                            **load(url, clients, partial(by_id, ids)),
                            "store_query_p50_ms": store_p50,
                            "goal": f"p50<={store_p50 + 3:.1f}ms at 1 client",
                        }
                    )
                for clients in (1, 4, 16):
                    measured = load(url, clients, partial(by_upload, photos))
                    figures.append(
                        {
                            "figure": "http_upload",
                            "runtime": runtime,
                            "clients": clients,
                            **measured,
                            "decode_encode_p50_ms": encode_p50,
                            "ratio_p50": round(measured["p50"] / encode_p50, 2),
                            "goal": f"p50<={1.25 * encode_p50:.1f}ms at 1 client",
                        }
                    )
    report("b3_http", figures)


if __name__ == "__main__":
    main()
