"""The HTTP service: ``create_app()`` builds a Flask app; gunicorn calls it as ``service:create_app()``."""

from __future__ import annotations

import ctypes
import logging

from flask import Flask
from flask_cors import CORS

from lookalike.errors import StoreError
from lookalike.logs import configure_logging
from lookalike.runtime import Encoder, load_encoder
from lookalike.settings import Settings
from lookalike.store import VectorStore
from service import batch, browse, health, items, openapi, page, search
from service.auth import protect_reads
from service.body_deadline import BodyDeadline
from service.errors import register_error_handlers
from service.inference import InferenceThread
from service.observability import REQUEST_ID_HEADER, RequestIdFilter, init_observability
from service.resources import EXTENSION_KEY, Resources, ready_error

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    encoder: Encoder | None = None,
    store: VectorStore | None = None,
) -> Flask:
    """Build the app; with no arguments everything comes from the environment (as under gunicorn).

    The model and the store are opened here, once per process, never per request; the model is
    built and run on the app's inference thread (`service.inference`).
    """
    if settings is None:
        settings = Settings.from_env()
        configure_logging(settings.log_level, filters=(RequestIdFilter(),))
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.wsgi_app = BodyDeadline(app.wsgi_app, settings.request_body_timeout_s, settings.max_upload_bytes)
    app.json.sort_keys = False
    store = store or VectorStore.from_settings(settings)  # first: a locked store fails before the model loads
    inference = InferenceThread(encoder or (lambda: load_encoder(settings)), settings.batch_size or 32)
    metrics = init_observability(app, lambda: _item_count(resources), lambda: _encoder_labels(resources))
    resources = Resources(settings, store, metrics, inference)
    app.extensions[EXTENSION_KEY] = resources
    if settings.cors_origins:
        CORS(app, origins=settings.cors_origins, expose_headers=[REQUEST_ID_HEADER])
    register_error_handlers(app)
    protect_reads(app)
    for blueprint in (search.bp, items.bp, batch.bp, browse.bp, health.bp, page.bp, openapi.bp, openapi.docs_bp):
        app.register_blueprint(blueprint)
    problem: StoreError | None = ready_error(resources, thorough=True)
    if problem is not None:
        log.warning("not ready yet", extra={"code": problem.code, "reason": problem.message})
    release_freed_memory()
    return app


def release_freed_memory() -> bool:
    """Hand the memory that start-up freed back to the system (glibc's ``malloc_trim``); whether
    any was given back (False too where the C library has no such call).

    Loading the model and the store frees most of what it reads (the model file's protobuf, the
    store's write-ahead log), but glibc keeps it, in the inference thread's arena above all.
    Measured (B4 store, ViT-B-32 on ONNX Runtime, 100k items, 2 cores of an AMD EPYC): one
    process holding both, 1,402 -> 1,051 MiB.
    """
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):
        return False


def _encoder_labels(resources: Resources) -> dict[str, str]:
    encoder = resources.encoder
    placement = encoder.placement
    random = str(encoder.random_weights).lower()
    return {
        "model": encoder.identity,
        "device": str(placement.device),
        "precision": placement.precision,
        "random_weights": random,
    }


def _item_count(resources: Resources) -> float:
    try:
        return float(resources.store.count())
    except StoreError:
        return float("nan")
