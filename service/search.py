"""``POST /v1/search``: the catalogue items that look most like an uploaded photo."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from flask import Blueprint, request

from lookalike.colour import DIM as COLOUR_DIM
from lookalike.errors import InvalidRequest, UnsupportedMediaType
from lookalike.looks import Look
from lookalike.queries import Ranking
from service.openapi import Operation, documented
from service.params import FILTER_NOTE, RecommendParams, UploadSearchParams, crop_to, parse_params
from service.resources import Resources, get_resources
from service.schemas import PredictedCategory, RecommendImages, SearchResults
from service.serialise import regions_json, results_json
from service.uploads import IMAGE_FIELD, Upload, read_upload, read_uploads

bp = Blueprint("search", __name__, url_prefix="/v1")


@bp.post("/search")
@documented(
    Operation(
        "Look-alikes of an uploaded photo (or of words, or both)",
        {200: SearchResults},
        query=UploadSearchParams,
        upload="optional",
        errors=(400, 413, 415, 422, 503),
        description=FILTER_NOTE
        + " Parameters may also be sent as form fields. `category=auto` filters by the category the"
        " fine-tuned head predicts, when it is probable enough. `boxes` searches several regions of the"
        " photo in one round trip: one result list per region in `regions`. `text` searches by words"
        " (CLIP's text tower), alone or mixed with the photo by `text_weight`; without `text` the image is required.",
    )
)
def search_by_upload():
    started = time.perf_counter()
    resources = get_resources()
    params = parse_params(UploadSearchParams, request.values)
    words_only = params.text is not None and IMAGE_FIELD not in request.files
    upload = None if words_only else read_upload(resources.settings.max_image_pixels)
    resources.check_collection()
    if upload is not None and params.boxes is not None:
        return search_regions(resources, params, upload, started)
    look, ranking = query_look(resources, params, upload)
    prediction = predict_category(resources, look.embedding) if params.auto_category else None
    categories = predicted_categories(prediction)
    with resources.metrics.searching("upload", ranking):
        query_sha256s = [upload.sha256] if upload is not None and params.hide_duplicates else []  # hash when asked
        search_filter = params.search_filter(categories, query_sha256s)
        hits = resources.store.similar(look, search_filter, ranking)
    return results_json(hits, started, prediction)


def query_look(resources: Resources, params: UploadSearchParams, upload: Upload | None) -> tuple[Look, Ranking]:
    """What the search compares with: the photo's look, the words' embedding, or their mix
    ((1 - w)·photo + w·text, normalised; the colour stays the photo's). Words alone have no colour,
    so colour counts for nothing in their ranking."""
    ranking = params.ranking(resources.colour_weight)
    photo = resources.looks([params.crop(upload.image)], "upload")[0] if upload is not None else None
    if photo is not None and params.text is None:
        return photo, ranking
    with resources.metrics.encode.labels("text").time():  # on the request thread: a text pass is rare and short
        (words,) = resources.encoder.embed_texts([params.text or ""])
    if photo is None:
        if params.colour is not None:
            raise InvalidRequest("`colour` recolours the photo's colours: send an image with `text` to use it")
        return Look(words, np.zeros(COLOUR_DIM, dtype=np.float32)), dataclasses.replace(ranking, colour_weight=0.0)
    mixed = (1 - params.text_weight) * photo.embedding + params.text_weight * words
    return Look(mixed / max(float(np.linalg.norm(mixed)), 1e-12), photo.colour), ranking


def search_regions(resources: Resources, params: UploadSearchParams, upload: Upload, started: float) -> dict:
    """Several regions of one photo: one forward pass, one engine batch, one result list each."""
    boxes = params.regions()
    looks = resources.looks([crop_to(upload.image, box) for box in boxes], "upload")
    predictions = [predict_category(resources, look.embedding) if params.auto_category else None for look in looks]
    query_sha256s = [upload.sha256] if params.hide_duplicates else []
    filters = [params.search_filter(predicted_categories(p), query_sha256s) for p in predictions]
    ranking = params.ranking(resources.colour_weight)
    with resources.metrics.searching("upload", ranking):
        answers = resources.store.similar_looks(looks, filters, ranking)
    return regions_json(list(zip(boxes, answers, predictions, strict=True)), started)


def predicted_categories(prediction: PredictedCategory | None) -> list[str] | None:
    """The categories a search filters by after `category=auto`: the predicted one when probable
    enough, none otherwise; None (the request's own categories) without a prediction."""
    if prediction is None:
        return None
    return [prediction.category] if prediction.applied else []


def predict_category(resources: Resources, embedding: np.ndarray) -> PredictedCategory:
    """The head's guess; it filters the search only when it is probable enough and a category of
    the collection (else unfiltered)."""
    classifier = resources.encoder.classifier
    if classifier is None:
        raise InvalidRequest(
            "category=auto needs a fine-tuned encoder with a classifier head: set MODEL_CHECKPOINT "
            "to a checkpoint written by `python -m finetune`"
        )
    category, probability = classifier.predict(embedding)
    threshold = resources.settings.auto_category_min_probability
    in_collection = resources.has_category(category)  # a head trained on another catalogue's categories
    return PredictedCategory(
        category=category,
        probability=round(probability, 4),
        applied=probability >= threshold and in_collection,
        min_probability=threshold,
        in_collection=in_collection,
    )


POSITIVE_IMAGES, NEGATIVE_IMAGES = "positive_image", "negative_image"


@bp.post("/recommend")
@documented(
    Operation(
        "More like these, less like those: several examples (item ids and/or photos)",
        {200: SearchResults},
        query=RecommendParams,
        form=RecommendImages,
        errors=(400, 404, 413, 415, 422, 503),
        description="Examples are `positive`/`negative` item ids (query or form fields, repeatable) and "
        "`positive_image`/`negative_image` files (repeatable); at least one positive. Qdrant's recommend "
        "query with the best-score strategy: items closer to a negative example than to every positive one "
        "sink to the bottom. Example items are never in the results. " + FILTER_NOTE,
    )
)
def recommend():
    started = time.perf_counter()
    resources = get_resources()
    if request.is_json:  # a JSON body would be silently ignored: say what this takes
        raise UnsupportedMediaType(
            "POST /v1/recommend takes multipart/form-data (or a query string): `positive`/`negative` item ids "
            "and `positive_image`/`negative_image` files, not a JSON body"
        )
    params = parse_params(RecommendParams, request.values)
    positive_images = read_uploads(POSITIVE_IMAGES, resources.settings.max_image_pixels)
    negative_images = read_uploads(NEGATIVE_IMAGES, resources.settings.max_image_pixels)
    if not params.positive and not positive_images:
        raise InvalidRequest("give at least one positive example: `positive` (an item id) or `positive_image`")
    if params.auto_category:
        raise InvalidRequest("category=auto is for single-photo searches; pass the categories to recommend")
    resources.check_collection()
    images = [params.crop(upload.image) for upload in (*positive_images, *negative_images)]
    looks = resources.looks(images, "recommend") if images else []
    positive = [*params.positive, *looks[: len(positive_images)]]
    negative = [*params.negative, *looks[len(positive_images) :]]
    ranking = params.ranking(resources.colour_weight)
    hidden: list[str] = []
    if params.hide_duplicates:  # the bytes of every example, stored or uploaded
        hidden = [item.sha256 for item in resources.store.get_many([*params.positive, *params.negative]).values()]
        hidden += [upload.sha256 for upload in (*positive_images, *negative_images)]
    with resources.metrics.searching("recommend", ranking):
        hits = resources.store.recommend(positive, negative, params.search_filter(None, hidden), ranking)
    return results_json(hits, started)
