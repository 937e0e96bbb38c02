"""``POST /v1/similar:batch``: the look-alikes of many stored items in one call (one Qdrant batch query).

A product-listing page asks for the neighbours of all its products at once. Answers keep the
order of the queries; an unknown id fails its own entry only.
"""

from __future__ import annotations

import time

from flask import Blueprint, request

from lookalike.errors import ItemNotFound
from lookalike.points import StoredItem
from lookalike.queries import SimilarQuery
from service.openapi import Operation, documented
from service.params import BatchQuery, BatchRequest, parse_json_body
from service.resources import Resources, get_resources
from service.schemas import BatchEntry, BatchResults, ErrorDetail
from service.serialise import results_json

bp = Blueprint("batch", __name__, url_prefix="/v1")


@bp.post("/similar:batch")
@documented(
    Operation(
        "Look-alikes of several stored items at once",
        {200: BatchResults},
        json_body=BatchRequest,
        errors=(400, 503),
        description="Each query takes the parameters of GET /v1/items/{item_id}/similar, with `filters` as an "
        "object of field -> values. Answers keep the order; an unknown id fails only its own entry.",
    )
)
def similar_batch():
    started = time.perf_counter()
    resources = get_resources()
    batch = parse_json_body(BatchRequest, request.get_data(cache=False))
    resources.check_collection()
    # The items whose own category or bytes some entry needs, read in one call.
    needed = [q.id for q in batch.queries if q.auto_category or q.hide_duplicates]
    known = resources.store.get_many(needed) if needed else {}
    queries = [_similar_query(resources, query, known) for query in batch.queries]
    with resources.metrics.searching("batch", queries[0].ranking):  # the ranking of the first entry
        answers = resources.store.similar_many(queries)
    entries = [_entry(query.id, answer, started) for query, answer in zip(batch.queries, answers, strict=True)]
    took_ms = round((time.perf_counter() - started) * 1000, 2)
    return BatchResults(results=entries, took_ms=took_ms).model_dump(exclude_none=True)


def _similar_query(resources: Resources, query: BatchQuery, known: dict[str, StoredItem]) -> SimilarQuery:
    item = known.get(query.id)  # an unknown id fails its entry later, in the store
    categories = None
    if query.auto_category:  # as by id: the item's own category
        categories = [item.category] if item else []
    search_filter = query.search_filter(categories, [item.sha256] if item else [])
    return SimilarQuery(query.id, search_filter, query.ranking(resources.colour_weight))


def _entry(item_id: str, answer, started: float) -> BatchEntry:
    if isinstance(answer, ItemNotFound):
        return BatchEntry(id=item_id, error=ErrorDetail(code=answer.code, message=answer.message))
    return BatchEntry(id=item_id, results=results_json(answer, started)["results"])
