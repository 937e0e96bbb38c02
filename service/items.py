"""``/v1/items/<id>``: read, add or replace, delete an item; its image; its look-alikes."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from flask import Blueprint, request, send_file

from lookalike.catalogue import ITEM_ID_PATTERN, resolve_inside
from lookalike.errors import CatalogueError, InvalidRequest, ItemNotFound
from lookalike.settings import Settings
from lookalike.store import StoredItem
from service.auth import require_api_key
from service.params import parse_search_params
from service.resources import get_resources
from service.serialise import item_json, results_json
from service.uploads import Upload, read_upload

bp = Blueprint("items", __name__, url_prefix="/v1/items")
PUT_FIELDS = {"category", "metadata"}
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


@bp.get("/<item_id>")
def get_item(item_id: str):
    item = get_resources().store.get(item_id)
    return {**item_json(item), "sha256": item.sha256, "model": item.model}


@bp.get("/<item_id>/similar")
def similar_items(item_id: str):
    started = time.perf_counter()
    resources = get_resources()
    params = parse_search_params(request.args)
    resources.check_collection()
    # By id, category=auto means the item's own category: no guessing needed.
    categories = [resources.store.get(item_id).category] if params.auto_category else None
    hits = resources.store.similar(
        item_id, params.search_filter(categories), params.k, params.offset, params.score_threshold
    )
    return results_json(hits, started)


@bp.get("/<item_id>/image")
def image(item_id: str):
    resources = get_resources()
    item = resources.store.get(item_id)
    return send_file(image_path(resources.settings, item), max_age=3600, conditional=True)


@bp.put("/<item_id>")
@require_api_key
def put_item(item_id: str):
    resources = get_resources()
    if not ITEM_ID_PATTERN.match(item_id):
        raise InvalidRequest("item ids are 1-200 characters of A-Z a-z 0-9 . _ : @ + = -")
    category, metadata = _put_fields()
    upload = read_upload(resources.settings.max_image_pixels)
    encoder, store = resources.encoder, resources.store
    store.ensure_collection(encoder.dim, encoder.identity, resources.settings.filterable_fields)
    existed = bool(store.get_many([item_id]))
    image_name = _save_upload(resources.settings.upload_dir, upload)
    item = StoredItem(item_id, category, image_name, upload.sha256, encoder.identity, "upload", metadata)
    store.upsert([item], encoder.embed_images([upload.image]))
    return {**item_json(item), "sha256": item.sha256, "model": item.model}, 200 if existed else 201


@bp.delete("/<item_id>")
@require_api_key
def delete_item(item_id: str):
    store = get_resources().store
    store.get(item_id)
    store.delete([item_id])
    return {"id": item_id, "deleted": True}


def _put_fields() -> tuple[str, dict[str, Any]]:
    unknown = set(request.form) - PUT_FIELDS
    if unknown:
        raise InvalidRequest(f"unknown form fields {sorted(unknown)}; accepted: image, category, metadata")
    category = (request.form.get("category") or "").strip()
    if not category:
        raise InvalidRequest("form field 'category' is required")
    try:
        metadata = json.loads(request.form.get("metadata") or "{}")
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"form field 'metadata' is not JSON: {e.msg}") from e
    if not isinstance(metadata, dict):
        raise InvalidRequest("form field 'metadata' must be a JSON object")
    return category, metadata


def _save_upload(upload_dir: Path, upload: Upload) -> str:
    """Keep the original bytes, named by content, written atomically; returns the file name."""
    name = f"{upload.sha256}{EXTENSIONS.get(upload.format, '.img')}"
    target = upload_dir / name
    if not target.exists():
        upload_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=upload_dir, delete=False) as tmp:
            tmp.write(upload.data)
        os.replace(tmp.name, target)
    return name


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
