"""Request ids, Prometheus metrics and the log context of a request.

Every response carries ``X-Request-ID`` (the caller's, when it sends a sane one), error bodies
repeat it, and every log line written while serving a request names it. ``/metrics`` exposes
request latency histograms and status counts per endpoint (prometheus-flask-exporter) plus
encode and search timings and the collection size.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, Response, g, has_request_context, request
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_flask_exporter import PrometheusMetrics
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

REQUEST_ID_HEADER = "X-Request-ID"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class ServiceMetrics:
    encode: Histogram
    search: Histogram


def init_observability(app: Flask, count_items: Callable[[], float]) -> ServiceMetrics:
    """Hook request ids and metrics into ``app``; ``count_items`` is called at scrape time.

    With several gunicorn workers (PROMETHEUS_MULTIPROC_DIR set by service/gunicorn.conf.py) every
    worker writes its values to shared files and a scrape of any worker sums them all.
    """
    app.before_request(_assign_request_id)
    app.after_request(_echo_request_id)
    if os.environ.get(MULTIPROCESS_ENV):
        GunicornInternalPrometheusMetrics(app, group_by="endpoint", buckets=LATENCY_BUCKETS)
        registry = None  # values go to the shared files; the exporter's collector reads them all
        items = Gauge("lookalike_collection_items", "Items in the served collection", multiprocess_mode="mostrecent")
        app.before_request(lambda: _refresh_on_scrape(items, count_items))
    else:
        registry = CollectorRegistry()  # per app: no global state, several apps per process in tests
        PrometheusMetrics(app, registry=registry, group_by="endpoint", buckets=LATENCY_BUCKETS)
        Gauge("lookalike_collection_items", "Items in the served collection", registry=registry).set_function(
            count_items
        )
    return ServiceMetrics(
        encode=Histogram(
            "lookalike_encode_seconds", "Image decode + embed time", buckets=LATENCY_BUCKETS, registry=registry
        ),
        search=Histogram("lookalike_search_seconds", "Qdrant query time", buckets=LATENCY_BUCKETS, registry=registry),
    )


def _refresh_on_scrape(items: Gauge, count_items: Callable[[], float]) -> None:
    if request.path == "/metrics":
        items.set(count_items())


def current_request_id() -> str | None:
    return g.get("request_id") if has_request_context() else None


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record logged while a request is being served."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = current_request_id()
        if request_id is not None:
            record.request_id = request_id
        return True


def _assign_request_id() -> None:
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = incoming if SANE_REQUEST_ID.match(incoming) else uuid.uuid4().hex


def _echo_request_id(response: Response) -> Response:
    request_id = current_request_id()
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response
