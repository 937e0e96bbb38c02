"""``POST /v1/search``: the catalogue items that look most like an uploaded photo."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from flask import Blueprint, request

from lookalike.errors import InvalidRequest
from service.params import parse_search_params
from service.resources import Resources, get_resources
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
    categories, prediction = None, None
    if params.auto_category:
        prediction = predict_category(resources, embedding)
        categories = [prediction["category"]] if prediction["applied"] else []
    hits = resources.store.similar(
        embedding, params.search_filter(categories), params.k, params.offset, params.score_threshold
    )
    body = results_json(hits, started)
    if prediction is not None:
        body["predicted_category"] = prediction
    return body


def predict_category(resources: Resources, embedding: np.ndarray) -> dict[str, Any]:
    """The head's guess; it filters the search only when it is probable enough (else unfiltered)."""
    classifier = resources.encoder.classifier
    if classifier is None:
        raise InvalidRequest(
            "category=auto needs a fine-tuned encoder with a classifier head: set MODEL_CHECKPOINT "
            "to a checkpoint written by `python -m finetune`"
        )
    category, probability = classifier.predict(embedding)
    threshold = resources.settings.auto_category_min_probability
    return {
        "category": category,
        "probability": round(probability, 4),
        "applied": probability >= threshold,
        "min_probability": threshold,
    }
