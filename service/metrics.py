"""Prometheus metrics of the HTTP app: requests and their latency per route, error answers, and the
``/metrics`` page, which also carries the engine's stage, batch and index metrics
(``birdsearch.engine.metrics``). With several worker processes, set ``PROMETHEUS_MULTIPROC_DIR``
(``birdsearch serve --workers N`` does) and ``/metrics`` sums them all.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from birdsearch.engine.metrics import LATENCY_BUCKETS

REQUESTS = Counter(
    "birdsearch_requests",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "birdsearch_request_seconds",
    "HTTP request latency, by route template",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
ERRORS = Counter("birdsearch_errors", "Error answers, by error code", ["code"])
IN_FLIGHT = Gauge(
    "birdsearch_requests_in_flight", "HTTP requests being answered", multiprocess_mode="livesum"
)


def exposition() -> tuple[bytes, str]:
    """The metrics page (all worker processes summed when PROMETHEUS_MULTIPROC_DIR is set)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def route_label(scope: Scope) -> str:
    """The matched route's template (``/images/{image_id}``), so that labels stay few."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return str(path)
    return scope.get("birdsearch.route_hint", "unmatched")


class MetricsMiddleware:
    """Counts every HTTP request and times it, labelled by route template and status."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            IN_FLIGHT.dec()
            route = route_label(scope)
            REQUESTS.labels(route, scope["method"], str(status)).inc()
            REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)
