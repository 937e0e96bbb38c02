"""B6: issue 17's merchandiser queries on the real catalogue: box search precision, query costs.

The catalogue's gallery split is indexed with the configured model (MODEL_CHECKPOINT for the
fine-tuned one); its held-out queries are pasted two by two, side by side on white, into
composites. Box precision: P@4 of the left (and right) product's category when the search gets
that half of the composite (``box``) against the whole composite. Query costs: p50 of a by-id
search with ``diversity`` and with ``colour`` against the same search without, in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import percentiles, report, time_calls
from finetune.data import split_catalogue
from ingest.pipeline import IngestOptions, ingest
from ingest.report import ErrorReport
from lookalike.catalogue import Catalogue, read_catalogue
from lookalike.images import decode_image, read_bytes
from lookalike.looks import looks_of
from lookalike.queries import Boost, Ranking, SearchFilter
from lookalike.runtime import Encoder, load_encoder
from lookalike.settings import Settings
from lookalike.store import VectorStore

SIDE = 224  # each product's height in a composite


def composite(left: Image.Image, right: Image.Image) -> Image.Image:
    """Two product photos side by side on white, each scaled to the same height."""
    halves = [photo.resize((round(photo.width * SIDE / photo.height), SIDE)) for photo in (left, right)]
    canvas = Image.new("RGB", (2 * max(h.width for h in halves), SIDE), "white")
    for index, half in enumerate(halves):
        canvas.paste(half, (index * canvas.width // 2 + (canvas.width // 2 - half.width) // 2, 0))
    return canvas


def precision_at_4(store: VectorStore, encoder: Encoder, image: Image.Image, category: str, weight: float) -> float:
    (look,) = looks_of(encoder, [image])
    hits = store.similar(look, SearchFilter(), Ranking(4, colour_weight=weight))
    return float(np.mean([hit.item.category == category for hit in hits]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=150)
    args = parser.parse_args()
    settings = Settings()
    catalogue = read_catalogue(settings.catalogue_source())
    split = split_catalogue(catalogue.items)
    encoder = load_encoder(settings)
    rng = np.random.default_rng(0)
    queries = split.queries
    pairs = [(queries[i], queries[j]) for i, j in rng.integers(0, len(queries), (args.pairs * 2, 2))]
    pairs = [(a, b) for a, b in pairs if a.category != b.category][: args.pairs]
    with tempfile.TemporaryDirectory() as tmp:
        store = VectorStore.from_settings(settings.with_overrides(qdrant_path=Path(tmp) / "q", qdrant_url=None))
        store.ensure_collection(encoder.dim, encoder.identity)
        gallery = Catalogue(catalogue.root, split.gallery, [])
        ingest(gallery, encoder, store, ErrorReport.open(Path(tmp) / "e.jsonl"), IngestOptions(progress=False))
        weight = settings.colour_weight
        scores: dict[str, list[float]] = {"left boxed": [], "left unboxed": [], "right boxed": [], "right unboxed": []}
        for left, right in pairs:
            photos = [decode_image(read_bytes(item.path), settings.max_image_pixels) for item in (left, right)]
            whole = composite(*photos)
            half = whole.width // 2
            for side, item, region in (
                ("left", left, (0, 0, half, SIDE)),
                ("right", right, (half, 0, whole.width, SIDE)),
            ):
                scores[f"{side} boxed"].append(
                    precision_at_4(store, encoder, whole.crop(region), item.category, weight)
                )
                scores[f"{side} unboxed"].append(precision_at_4(store, encoder, whole, item.category, weight))
        ids = [item.id for item in split.gallery[:: max(1, len(split.gallery) // 100)]]

        def timed(**ranking) -> dict[str, float]:
            rank = Ranking(10, colour_weight=weight, **ranking)
            return percentiles(time_calls(lambda i: store.similar(ids[i % len(ids)], SearchFilter(), rank), 200))

        plain, diverse, coloured = timed(), timed(diversity=0.5), timed(colour_target="red")
        boosted = timed(boosts=(Boost("price", 0.01),))  # the catalogue has no price: the formula's cost alone
        halves = looks_of(encoder, [whole.crop((0, 0, half, SIDE)), whole.crop((half, 0, whole.width, SIDE))])
        rank, unfiltered = Ranking(10, colour_weight=weight), [SearchFilter(), SearchFilter()]
        one_batch = percentiles(time_calls(lambda i: store.similar_looks(halves, unfiltered, rank), 200))
        one_by_one = percentiles(time_calls(lambda i: [store.similar(h, SearchFilter(), rank) for h in halves], 200))
        store.close()
    figures = [
        {"figure": f"box P@4 {name}", "value": round(float(np.mean(values)), 3), "pairs": len(pairs)}
        for name, values in scores.items()
    ]
    figures += [
        {
            "figure": "by-id p50 ms, diversity=0.5",
            "value": diverse["p50"],
            "baseline_plain": plain["p50"],
            "ratio": round(diverse["p50"] / plain["p50"], 2),
        },
        {
            "figure": "by-id p50 ms, boost.price=0.01",
            "value": boosted["p50"],
            "baseline_plain": plain["p50"],
            "ratio": round(boosted["p50"] / plain["p50"], 2),
        },
        {
            "figure": "by-id p50 ms, colour=red",
            "value": coloured["p50"],
            "baseline_plain": plain["p50"],
            "ratio": round(coloured["p50"] / plain["p50"], 2),
        },
    ]
    figures.append(
        {
            "figure": "two regions (boxes) p50 ms, one batch",
            "value": one_batch["p50"],
            "baseline_two_searches": one_by_one["p50"],
            "ratio": round(one_batch["p50"] / one_by_one["p50"], 2),
        }
    )
    report("b6_queries", [{**f, "model": encoder.identity, "colour_weight": weight} for f in figures])


if __name__ == "__main__":
    main()
