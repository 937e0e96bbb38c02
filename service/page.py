"""``GET /``: the merchandiser's page. It calls the same /v1 API a site backend uses."""

from __future__ import annotations

from flask import Blueprint, render_template

from service.resources import get_resources

bp = Blueprint("page", __name__)


@bp.get("/")
def index():
    resources = get_resources()
    return render_template(
        "index.html",
        model=resources.encoder.identity,
        has_head=resources.encoder.classifier is not None,
        colour_weight=resources.settings.colour_weight,
    )
