"""Stored items and hits -> the response models of `service.schemas` -> JSON-ready dicts."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from flask import url_for

from lookalike.points import Hit, StoredItem
from service.schemas import Item, ItemSummary, PredictedCategory, RegionResults, Result, SearchResults


def image_url(item: StoredItem) -> str:
    return url_for("items.image", item_id=item.id)


def item_json(item: StoredItem) -> dict[str, Any]:
    return ItemSummary(
        id=item.id, category=item.category, product_id=item.product, image_url=image_url(item), metadata=item.metadata
    ).model_dump()


def item_detail_json(item: StoredItem) -> dict[str, Any]:
    return Item(
        id=item.id,
        category=item.category,
        product_id=item.product,
        image_url=image_url(item),
        metadata=item.metadata,
        sha256=item.sha256,
        model=item.model,
    ).model_dump()


def results_json(hits: Sequence[Hit], started: float, prediction: PredictedCategory | None = None) -> dict[str, Any]:
    """The response of every similarity endpoint; ``started`` is a `time.perf_counter()` value."""
    took_ms = round((time.perf_counter() - started) * 1000, 2)
    answer = SearchResults(results=_results(hits), took_ms=took_ms, predicted_category=prediction)
    return answer.model_dump(exclude_none=True)


def regions_json(
    regions: Sequence[tuple[Sequence[float], Sequence[Hit], PredictedCategory | None]], started: float
) -> dict[str, Any]:
    """A search with several regions of one photo: (box, hits, prediction) per region, in order."""
    took_ms = round((time.perf_counter() - started) * 1000, 2)
    entries = [
        RegionResults(box=list(box), results=_results(hits), predicted_category=prediction)
        for box, hits, prediction in regions
    ]
    return SearchResults(results=[], took_ms=took_ms, regions=entries).model_dump(exclude_none=True)


def _results(hits: Sequence[Hit]) -> list[Result]:
    return [
        Result(
            id=hit.item.id,
            score=round(hit.score, 6),
            category=hit.item.category,
            product_id=hit.item.product,
            image_url=image_url(hit.item),
            metadata=hit.item.metadata,
        )
        for hit in hits
    ]
