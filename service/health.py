"""``/healthz`` (the process answers) and ``/readyz`` (it can serve searches)."""

from __future__ import annotations

from flask import Blueprint

from service.errors import error_response
from service.openapi import Operation, documented
from service.resources import get_resources, ready_error
from service.schemas import Health, Ready

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@documented(Operation("The process answers", {200: Health}))
def healthz():
    return {"status": "ok"}


@bp.get("/readyz")
@documented(
    Operation("Ready to search: model loaded, store reachable, collection of this model", {200: Ready}, errors=(503,))
)
def readyz():
    resources = get_resources()
    problem = ready_error(resources)
    if problem is not None:
        response, status = error_response(503, problem.code, problem.message)
        response.headers["Retry-After"] = "5"
        return response, status
    return {
        "status": "ready",
        "collection": resources.settings.collection,
        "serving": resources.store.collection,
        "items": resources.store.count(),
        "model": resources.encoder.identity,
        "device": str(resources.encoder.placement.device),
        "precision": resources.encoder.placement.precision,
        "colour_weight": resources.colour_weight,
        "random_weights": resources.encoder.random_weights,
        "calibration": resources.calibration.to_metadata() if resources.calibration else None,
    }
