"""Browsing the catalogue: its categories with counts, and random items (the page's "random item")."""

from __future__ import annotations

from flask import Blueprint, request

from lookalike.queries import SearchFilter
from service.openapi import Operation, documented
from service.params import RandomParams, parse_params
from service.resources import get_resources
from service.schemas import Categories, RandomItems
from service.serialise import item_json

bp = Blueprint("browse", __name__, url_prefix="/v1")


@bp.get("/categories")
@documented(Operation("Categories with their item counts", {200: Categories}, errors=(503,)))
def categories():
    resources = get_resources()
    resources.check_collection()
    return {"categories": [{"name": name, "count": count} for name, count in resources.store.categories()]}


@bp.get("/items:random")
@documented(Operation("Random items, for browsing", {200: RandomItems}, query=RandomParams, errors=(400, 503)))
def random_items():
    resources = get_resources()
    params = parse_params(RandomParams, request.args)
    resources.check_collection()
    items = resources.store.random_items(SearchFilter(categories=params.category), params.k)
    return {"items": [item_json(item) for item in items]}
