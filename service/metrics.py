"""Prometheus metrics: requests and their latency per route, and the latency of each query stage.

Stages of a query: ``decode`` (bytes to 48 kHz mono, per request), ``features`` (log-mel of a
batch), ``encode`` (the audio tower on a batch) and ``search`` (the index, per request). With several worker processes, set ``PROMETHEUS_MULTIPROC_DIR``
(``birdsearch serve --workers N`` does) and ``/metrics`` sums them all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

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
STAGE_SECONDS = Histogram(
    "birdsearch_stage_seconds",
    "Latency of each query stage: decode, features, encode (per batch), search",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
BATCH_ROWS = Histogram(
    "birdsearch_batch_windows", "Windows per forward pass", ["mode"], buckets=BATCH_BUCKETS
)
BATCH_REQUESTS = Histogram(
    "birdsearch_batch_requests", "Requests sharing one forward pass", ["mode"], buckets=BATCH_BUCKETS
)
ERRORS = Counter("birdsearch_errors", "Error answers, by error code", ["code"])
INDEX_RELOADS = Counter("birdsearch_index_reloads", "Index version loads, by outcome", ["outcome"])
INDEX_IMAGES = Gauge(
    "birdsearch_index_images", "Images in the index version being served", multiprocess_mode="livemax"
)
IN_FLIGHT = Gauge(
    "birdsearch_requests_in_flight", "HTTP requests being answered", multiprocess_mode="livesum"
)


def observe_stage(stage: str, seconds: float) -> None:
    STAGE_SECONDS.labels(stage).observe(seconds)


@contextmanager
def stage_timer(stage: str) -> Iterator[None]:
    """Time a block into ``birdsearch_stage_seconds{stage=...}``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        observe_stage(stage, time.perf_counter() - started)


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
