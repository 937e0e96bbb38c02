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
from contextlib import AbstractContextManager
from dataclasses import dataclass

from flask import Flask, Request, Response, g, has_request_context, request
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_flask_exporter import PrometheusMetrics
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

from lookalike.queries import Ranking

REQUEST_ID_HEADER = "X-Request-ID"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class ServiceMetrics:
    encode: Histogram  # by kind of request: upload, recommend, put
    search: Histogram  # by kind (upload, by_id, batch, recommend) and ranking (shape, colour, fused)

    def searching(self, kind: str, ranking: Ranking) -> AbstractContextManager:
        return self.search.labels(kind, ranking_kind(ranking)).time()


def ranking_kind(ranking: Ranking) -> str:
    weight = ranking.colour_weight
    return "shape" if weight <= 0 else "colour" if weight >= 1 else "fused"


def endpoint(request: Request) -> str:
    """The latency label of a request: its view, or "unmatched" for a path no route serves."""
    return request.url_rule.endpoint if request.url_rule is not None else "unmatched"


def init_observability(
    app: Flask, count_items: Callable[[], float], describe_encoder: Callable[[], dict[str, str]]
) -> ServiceMetrics:
    """Hook request ids and metrics into ``app``; ``count_items`` and ``describe_encoder`` (model,
    device, precision, random_weights: an info-style gauge) are called at scrape time.

    With several gunicorn workers (PROMETHEUS_MULTIPROC_DIR set by service/gunicorn.conf.py) every
    worker writes its values to shared files and a scrape of any worker sums them all.
    """
    app.before_request(_assign_request_id)
    app.after_request(_echo_request_id)
    multiprocess = bool(os.environ.get(MULTIPROCESS_ENV))
    if multiprocess:
        GunicornInternalPrometheusMetrics(app, group_by=endpoint, buckets=LATENCY_BUCKETS)
        registry = None  # values go to the shared files; the exporter's collector reads them all
    else:
        registry = CollectorRegistry()  # per app: no global state, several apps per process in tests
        PrometheusMetrics(app, registry=registry, group_by=endpoint, buckets=LATENCY_BUCKETS)
    shared = {"multiprocess_mode": "mostrecent"} if multiprocess else {}
    items = Gauge("lookalike_collection_items", "Items in the served collection", registry=registry, **shared)
    encoder = Gauge(
        "lookalike_encoder_info",
        "The encoder this process serves with (value 1)",
        ("model", "device", "precision", "random_weights"),
        registry=registry,
        **shared,
    )
    app.before_request(lambda: _refresh_on_scrape(items, count_items, encoder, describe_encoder))
    return ServiceMetrics(
        encode=Histogram(
            "lookalike_encode_seconds",
            "Image decode + embed time",
            ("kind",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        search=Histogram(
            "lookalike_search_seconds",
            "Vector store query time",
            ("kind", "ranking"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
    )


def _refresh_on_scrape(
    items: Gauge, count_items: Callable[[], float], encoder: Gauge, describe_encoder: Callable[[], dict[str, str]]
) -> None:
    if request.path == "/metrics":
        items.set(count_items())
        encoder.labels(**describe_encoder()).set(1)


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
