"""``/v1/items/<id>``: read, add or replace, delete an item; its image; its look-alikes."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flask import Blueprint, request, send_file

from lookalike.catalogue import ITEM_ID_PATTERN, resolve_inside
from lookalike.errors import CatalogueError, InvalidRequest, ItemNotFound
from lookalike.images import FORMAT_EXTENSIONS, image_mimetype, image_mimetypes
from lookalike.journal import UploadJournal
from lookalike.looks import Look
from lookalike.points import Hit, StoredItem
from lookalike.queries import NearDuplicateRule
from lookalike.settings import Settings
from service.auth import require_api_key
from service.openapi import Operation, documented
from service.params import FILTER_NOTE, PutForm, SearchParams, parse_params, parse_search_params
from service.resources import Resources, get_resources
from service.schemas import Deleted, DuplicateOf, Item, SearchResults, StoredItemResult
from service.serialise import item_detail_json, results_json
from service.uploads import Upload, read_upload

log = logging.getLogger(__name__)
bp = Blueprint("items", __name__, url_prefix="/v1/items")

#: What the image endpoint answers with: the type of the stored file, by its content.
IMAGE_TYPES = image_mimetypes()


@bp.get("/<item_id>")
@documented(Operation("One item", {200: Item}, errors=(404, 503), tags=("items",)))
def get_item(item_id: str):
    return item_detail_json(get_resources().store.get(item_id))


@bp.get("/<item_id>/similar")
@documented(
    Operation(
        "Look-alikes of a stored item (from its stored embedding; never the item itself)",
        {200: SearchResults},
        query=SearchParams,
        errors=(400, 404, 503),
        description=FILTER_NOTE + " `category=auto` means the item's own category.",
    )
)
def similar_items(item_id: str):
    started = time.perf_counter()
    resources = get_resources()
    params = parse_search_params(request.args)
    resources.check_collection()
    # By id, category=auto means the item's own category: no guessing needed.
    item = resources.store.get(item_id) if params.auto_category or params.hide_duplicates else None
    categories = [item.category] if item and params.auto_category else None
    search_filter = params.search_filter(categories, [item.sha256] if item else [])
    ranking = params.ranking(resources.colour_weight)
    with resources.metrics.searching("by_id", ranking):
        hits = resources.store.similar(item_id, search_filter, ranking)
    return results_json(hits, started)


@bp.get("/<item_id>/image")
@documented(Operation("The item's image file", {}, file_response=IMAGE_TYPES, errors=(404, 503)))
def image(item_id: str):
    resources = get_resources()
    item = resources.store.get(item_id)
    path = image_path(resources.settings, item)
    mimetype = image_mimetype(path)
    if mimetype is None:
        raise ItemNotFound(f"the file of item {item_id!r} is not an image in an accepted format")
    return send_file(path, mimetype=mimetype, max_age=3600, conditional=True)


@bp.put("/<item_id>")
@documented(
    Operation(
        "Add or replace one item (no rebuild needed)",
        {200: StoredItemResult, 201: StoredItemResult},
        form=PutForm,
        upload="required",
        errors=(400, 401, 403, 413, 415, 422, 503, 507),
        auth=True,
    )
)
@require_api_key
def put_item(item_id: str):
    resources = get_resources()
    if not ITEM_ID_PATTERN.match(item_id):
        raise InvalidRequest("item ids are 1-200 characters of A-Z a-z 0-9 . _ : @ + = -")
    form = parse_params(PutForm, request.form)
    upload = read_upload(resources.settings.max_image_pixels)
    encoder, store = resources.encoder, resources.store
    store.ensure_collection(encoder.dim, encoder.identity, resources.settings.filterable_fields)
    (look,) = resources.looks([upload.image], "put")
    duplicate = _look_alike(resources, item_id, look)
    item = StoredItem(
        item_id,
        form.category,
        _upload_name(upload),
        upload.sha256,
        encoder.identity,
        "upload",
        form.metadata or {},
        form.product_id,
    )
    journal = UploadJournal(resources.settings.upload_dir)
    with journal.item_locked(item_id):
        existed = bool(store.get_many([item_id]))
        # The file and the journal entry first (a reindex running meanwhile replays the entry into
        # its collection); both are undone when the store write fails.
        with journal.photo_saved(item.image, upload.data), journal.recording(item):
            store.upsert([item], [look])
    body = item_detail_json(item)
    if duplicate is not None:
        body["duplicate_of"] = DuplicateOf(
            id=duplicate.item.id, colour_similarity=round(duplicate.score, 4)
        ).model_dump()
        log.info(
            "uploaded photo looks like a stored item", extra={"item_id": item_id, "duplicate_of": duplicate.item.id}
        )
    return body, 200 if existed else 201


def _look_alike(resources: Resources, item_id: str, look: Look) -> Hit | None:
    """A stored item (not this one) that the photo nearly duplicates, when the check is on."""
    rule = NearDuplicateRule.from_settings(resources.settings)
    return resources.store.look_alikes([look], [item_id], rule)[0] if rule else None


@bp.delete("/<item_id>")
@documented(Operation("Delete one item", {200: Deleted}, errors=(401, 403, 404, 503, 507), auth=True))
@require_api_key
def delete_item(item_id: str):
    resources = get_resources()
    resources.store.get(item_id)
    journal = UploadJournal(resources.settings.upload_dir)
    with journal.item_locked(item_id), journal.forgetting(item_id):  # first, as PUT
        resources.store.delete([item_id])
    return {"id": item_id, "deleted": True}


def _upload_name(upload: Upload) -> str:
    """Uploads are named by content: the same photo under two ids is stored once."""
    return f"{upload.sha256}{FORMAT_EXTENSIONS.get(upload.format, '.img')}"


def image_path(settings: Settings, item: StoredItem) -> Path:
    """The item's image file, only ever inside the catalogue root or the upload folder."""
    try:
        root = settings.upload_dir if item.image_source == "upload" else settings.catalogue_root()
        path = resolve_inside(root.resolve(), item.image)
    except (CatalogueError, ValueError) as e:
        raise ItemNotFound(f"no image available for item {item.id!r}") from e
    if not path.is_file():
        raise ItemNotFound(f"the image file of item {item.id!r} is missing")
    return path
