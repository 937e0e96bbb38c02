"""``GET /``: the merchandiser's page. It calls the same /v1 API a site backend uses."""

from __future__ import annotations

import contextlib

from flask import Blueprint, render_template

from lookalike.errors import StoreError
from service.resources import get_resources

bp = Blueprint("page", __name__)
#: The page loads only its own script, style and images (uploads are shown from blob: URLs), so a
#: payload that sneaks into it (an item id, metadata) can never run as script.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def numeric_fields(filterable_fields: list[str]) -> list[str]:
    """The `name:number` FILTERABLE_FIELDS: the page offers a range filter and a boost for each."""
    return [entry.partition(":")[0] for entry in filterable_fields if entry.endswith(":number")]


@bp.get("/")
def index():
    resources = get_resources()
    with contextlib.suppress(StoreError):  # the page renders even before the store is ready
        resources.check_collection()  # reads the calibrated colour weight the slider starts at
    page = render_template(
        "index.html",
        model=resources.encoder.identity,
        has_head=resources.encoder.classifier is not None,
        has_text=resources.encoder.searches_text,
        colour_weight=resources.colour_weight,
        display_fields=",".join(resources.settings.display_fields),
        numeric_fields=numeric_fields(resources.settings.filterable_fields),
        random_weights=resources.encoder.random_weights,
        protect_reads=resources.settings.protect_reads,
    )
    return page, 200, {"Content-Security-Policy": PAGE_CSP}
