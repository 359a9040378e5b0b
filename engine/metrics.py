"""Prometheus metrics of the engine's own work: the latency of each query stage, the size of each
batch, and the index versions it loads.

Stages of a query: ``decode`` (bytes to 48 kHz mono, per request), ``features`` (log-mel of a
batch), ``encode`` (the audio tower on a batch) and ``search`` (the index, per request). They land
in prometheus_client's process registry; the query service exposes them with its own HTTP metrics
(``birdsearch.service.metrics``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

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
INDEX_RELOADS = Counter("birdsearch_index_reloads", "Index version loads, by outcome", ["outcome"])
INDEX_IMAGES = Gauge(
    "birdsearch_index_images", "Images in the index version being served", multiprocess_mode="livemax"
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
