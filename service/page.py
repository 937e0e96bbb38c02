"""``GET /``: the merchandiser's page. It calls the same /v1 API a site backend uses."""

from __future__ import annotations

from flask import Blueprint, render_template

from service.resources import get_resources

bp = Blueprint("page", __name__)
#: The page loads only its own script, style and images (uploads are shown from blob: URLs), so a
#: payload that sneaks into it (an item id, metadata) can never run as script.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@bp.get("/")
def index():
    resources = get_resources()
    page = render_template(
        "index.html",
        model=resources.encoder.identity,
        has_head=resources.encoder.classifier is not None,
        colour_weight=resources.settings.colour_weight,
    )
    return page, 200, {"Content-Security-Policy": PAGE_CSP}
