"""Choosing and building the FAISS index, autofaiss-style, and measuring its recall against exact search.

The rule (``choose_index_type``), for N vectors of dimension D and a memory budget:

- ``Flat`` (exact inner product) while N <= ``exact_max`` (default 250,000: one 768-d query scans
  0.77 GB, a few tens of milliseconds on a server CPU) and the vectors fit the budget;
- ``HNSW32`` beyond, when vectors + graph (about N * (4D + 256) bytes) fit the budget;
- ``IVF{nlist},Flat`` when only the vectors fit;
- ``IVF{nlist},PQ{m}`` when even they do not (m bytes per vector).

The query-time knob (efSearch or nprobe) is raised until recall@10 against exact search reaches
``target_recall`` on a sample of the gallery's own vectors, and the recall reached is stored.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from birdsearch.errors import ConfigError

log = logging.getLogger(__name__)

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq")
HNSW_M = 32


@dataclass(frozen=True)
class IndexOptions:
    """How the index type is chosen and tuned."""

    index_type: str = "auto"  # auto, flat, hnsw, ivf or ivfpq
    exact_max: int = 250_000  # largest gallery searched exactly
    memory_budget_bytes: int = 16 * 1024**3  # the index must fit in this much RAM
    target_recall: float = 0.95  # recall@10 vs exact that efSearch / nprobe are tuned to reach
    recall_queries: int = 1000  # gallery vectors used as queries to measure recall
    seed: int = 0


@dataclass
class BuiltIndex:
    """A built index and the facts the manifest records about it."""

    index: Any
    factory: str  # FAISS factory string, e.g. "Flat", "HNSW32", "IVF256,Flat"
    search_params: dict[str, int] = field(default_factory=dict)  # efSearch / nprobe
    recall_at_10: float = 1.0
    recall_queries: int = 0
    build_seconds: float = 0.0


def choose_index_type(n: int, dim: int, options: IndexOptions) -> str:
    """'flat', 'hnsw', 'ivf' or 'ivfpq' for n vectors of dimension dim (see the module docstring)."""
    if options.index_type != "auto":
        if options.index_type not in INDEX_TYPES:
            raise ConfigError(
                f"unknown index type {options.index_type!r}: use one of {', '.join(INDEX_TYPES)}"
            )
        return options.index_type
    flat_bytes = n * dim * 4
    if n <= options.exact_max and flat_bytes <= options.memory_budget_bytes:
        return "flat"
    if flat_bytes + n * HNSW_M * 2 * 4 <= options.memory_budget_bytes:
        return "hnsw"
    return "ivf" if flat_bytes <= options.memory_budget_bytes else "ivfpq"


def ivf_lists(n: int) -> int:
    """About 4 sqrt(N) lists, with at least 39 training points per list (FAISS's minimum)."""
    return int(max(1, min(4 * math.isqrt(max(n, 1)), n // 39, 65536)))


def pq_bytes(dim: int, budget_per_vector: float) -> int:
    """The largest sub-quantizer count dividing dim that fits the per-vector budget (at least 4)."""
    candidates = [m for m in range(4, dim + 1, 4) if dim % m == 0 and m <= max(4, budget_per_vector)]
    return max(candidates) if candidates else dim


def factory_string(kind: str, n: int, dim: int, options: IndexOptions) -> str:
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{HNSW_M}"
    if kind == "ivf":
        return f"IVF{ivf_lists(n)},Flat"
    return f"IVF{ivf_lists(n)},PQ{pq_bytes(dim, options.memory_budget_bytes / max(n, 1))}"


def build_index(vectors: np.ndarray, options: IndexOptions) -> BuiltIndex:
    """Build the chosen index over (N, D) float32 unit vectors, tune it, and measure recall@10."""
    import faiss

    start = time.perf_counter()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    kind = choose_index_type(n, dim, options)
    if kind != "flat" and n < 2:
        kind = "flat"  # nothing to train on
    factory = factory_string(kind, n, dim, options)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        faiss.downcast_index(index).hnsw.efConstruction = 80
    if not index.is_trained:
        faiss.ParameterSpace().set_index_parameter(index, "verbose", 0)
        train = sample_rows(vectors, 256 * ivf_lists(n), options.seed)
        index.train(train)
    if n:
        index.add(vectors)
    built = BuiltIndex(index, factory)
    if kind != "flat":
        tune(built, vectors, kind, options)
    else:
        built.recall_queries = min(n, options.recall_queries)
    built.build_seconds = time.perf_counter() - start
    log.info(
        "index %s over %d vectors: recall@10 %.4f (%s) in %.1f s",
        factory, n, built.recall_at_10, built.search_params or "exact", built.build_seconds,
    )  # fmt: skip
    return built


def sample_rows(vectors: np.ndarray, count: int, seed: int) -> np.ndarray:
    if len(vectors) <= count:
        return vectors
    rows = np.random.default_rng(seed).choice(len(vectors), size=count, replace=False)
    return vectors[np.sort(rows)]


def recall_at_k(found: np.ndarray, exact: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k (-1 pads never count)."""
    hits = [len(set(f[:k].tolist()) & set(e[:k].tolist()) - {-1}) for f, e in zip(found, exact, strict=True)]
    denominators = [max(1, int((e[:k] >= 0).sum())) for e in exact]
    return float(np.mean([h / d for h, d in zip(hits, denominators, strict=True)])) if hits else 1.0


def tune(built: BuiltIndex, vectors: np.ndarray, kind: str, options: IndexOptions) -> None:
    """Raise efSearch / nprobe until recall@10 reaches the target (or the knob's maximum)."""
    import faiss

    queries = sample_rows(vectors, options.recall_queries, options.seed + 1)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(queries, 10)
    if kind == "hnsw":
        name, values = "efSearch", [16, 32, 64, 128, 256, 512, 1024]
    else:
        nlist = faiss.extract_index_ivf(built.index).nlist
        name, values = "nprobe", sorted({min(nlist, 2**i) for i in range(0, 17)})
    space = faiss.ParameterSpace()
    for value in values:
        space.set_index_parameter(built.index, name, value)
        _, found = built.index.search(queries, 10)
        recall = recall_at_k(found, truth)
        built.search_params, built.recall_at_10 = {name: value}, recall
        if recall >= options.target_recall:
            break
    built.recall_queries = len(queries)
    if built.recall_at_10 < options.target_recall:
        log.warning(
            "index %s reaches recall@10 %.3f at most (target %.3f): raise the memory budget for a finer index",
            built.factory, built.recall_at_10, options.target_recall,
        )  # fmt: skip
