"""``POST /v1/search``: the catalogue items that look most like an uploaded photo."""

from __future__ import annotations

import time

from flask import Blueprint, request

from service.params import parse_search_params
from service.resources import get_resources
from service.serialise import results_json
from service.uploads import read_upload

bp = Blueprint("search", __name__, url_prefix="/v1")


@bp.post("/search")
def search_by_upload():
    started = time.perf_counter()
    resources = get_resources()
    params = parse_search_params(request.values)
    upload = read_upload(resources.settings.max_image_pixels)
    resources.check_collection()
    embedding = resources.encoder.embed_images([upload.image])[0]
    hits = resources.store.similar(embedding, params.search_filter(), params.k, params.offset, params.score_threshold)
    return results_json(hits, started)
