"""The HTTP service: ``create_app()`` builds a Flask app; gunicorn calls it as ``service:create_app()``."""

from __future__ import annotations

import logging

from flask import Flask

from lookalike.encoder import ImageEncoder
from lookalike.errors import StoreError
from lookalike.logs import configure_logging
from lookalike.settings import Settings
from lookalike.store import VectorStore
from service import health, items, search
from service.errors import register_error_handlers
from service.resources import EXTENSION_KEY, Resources, ready_error

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    encoder: ImageEncoder | None = None,
    store: VectorStore | None = None,
) -> Flask:
    """Build the app; with no arguments everything comes from the environment (as under gunicorn).

    The model and the store are opened here, once per process, never per request.
    """
    if settings is None:
        settings = Settings()
        configure_logging(settings.log_level)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.json.sort_keys = False
    encoder = encoder or ImageEncoder.from_settings(settings)
    store = store or VectorStore.from_settings(settings)
    resources = Resources(settings, encoder, store)
    app.extensions[EXTENSION_KEY] = resources
    register_error_handlers(app)
    for blueprint in (search.bp, items.bp, health.bp):
        app.register_blueprint(blueprint)
    problem: StoreError | None = ready_error(resources)
    if problem is not None:
        log.warning("not ready yet", extra={"code": problem.code, "reason": problem.message})
    return app
