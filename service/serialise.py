"""JSON shapes of the API: one place that turns stored items and hits into responses."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from flask import url_for

from lookalike.store import Hit, StoredItem


def item_json(item: StoredItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "category": item.category,
        "image_url": url_for("items.image", item_id=item.id),
        "metadata": item.metadata,
    }


def hit_json(hit: Hit) -> dict[str, Any]:
    return {"id": hit.item.id, "score": round(hit.score, 6), **item_json(hit.item)}


def results_json(hits: Sequence[Hit], started: float) -> dict[str, Any]:
    """The response of every similarity endpoint; ``started`` is a `time.perf_counter()` value."""
    return {"results": [hit_json(hit) for hit in hits], "took_ms": round((time.perf_counter() - started) * 1000, 2)}
