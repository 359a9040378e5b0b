"""Choosing and building the FAISS index, autofaiss-style, and measuring its recall against exact search.

The rule (``choose_index_type``), for N vectors of dimension D, their stored width (``storage``:
4 bytes a component for float32, 2 for float16, 1 for 8-bit scalar quantisation) and a memory budget:

- ``Flat`` (exact inner product) while N <= ``exact_max`` (default 250,000) and the codes fit
  the budget;
- ``HNSW32`` beyond, when codes + graph (about N * 256 bytes) fit the budget;
- ``IVF{nlist},Flat`` when only the codes fit;
- ``IVF{nlist},PQ{m}`` when even they do not (m bytes per vector).

float16 and 8-bit storage (``SQfp16``, ``SQ8`` in FAISS's terms) replace the float32 codes of
Flat, HNSW and IVF; they are approximate even for Flat, so their recall is measured too.

The query-time knob (efSearch or nprobe) is raised until recall@10 against exact search reaches
``target_recall`` on the queries the service really asks: the teacher's text embeddings of the
gallery's species, and distilled audio embeddings when given. The gallery's own vectors
("self" queries) are a different distribution (images, not text or audio) and reach a higher
recall at the same setting, so their recall is recorded beside the others but never tuned on.
Cost curves: BENCHMARKS.md, "Scale".
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
# How the vectors are stored in the index: bytes per component and FAISS's name for the encoding.
STORAGE: dict[str, tuple[int, str]] = {"float32": (4, "Flat"), "float16": (2, "SQfp16"), "sq8": (1, "SQ8")}
SELF_QUERIES = "self"  # recall of the gallery's own vectors: recorded, never tuned on
K = 10


@dataclass(frozen=True)
class IndexOptions:
    """How the index type is chosen and tuned."""

    index_type: str = "auto"  # auto, flat, hnsw, ivf or ivfpq
    exact_max: int = 250_000  # largest gallery searched exactly
    memory_budget_bytes: int = 16 * 1024**3  # the index must fit in this much RAM
    target_recall: float = 0.95  # recall@10 vs exact that efSearch / nprobe are tuned to reach
    recall_queries: int = 1000  # queries of each kind used to measure recall (a sample when more)
    storage: str = "float32"  # how the index stores vectors: float32, float16 or sq8 (see STORAGE)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.storage not in STORAGE:
            raise ConfigError(f"unknown vector storage {self.storage!r}: use one of {', '.join(STORAGE)}")
        if not 0.0 < self.target_recall <= 1.0:
            raise ConfigError(f"target_recall must be in (0, 1], got {self.target_recall}")

    @property
    def code_bytes(self) -> int:
        """Bytes per vector component in the index."""
        return STORAGE[self.storage][0]


@dataclass
class BuiltIndex:
    """A built index and the facts the manifest records about it."""

    index: Any
    factory: str  # FAISS factory string, e.g. "Flat", "HNSW32", "IVF256,Flat"
    search_params: dict[str, int] = field(default_factory=dict)  # efSearch / nprobe
    recall_at_10: float = 1.0  # the lowest recall among the tuned query kinds, at search_params
    recall_by_query: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> recall, queries
    build_seconds: float = 0.0

    @property
    def recall_queries(self) -> int:
        """Queries measured, all kinds together."""
        return int(sum(r["queries"] for r in self.recall_by_query.values()))


def choose_index_type(n: int, dim: int, options: IndexOptions) -> str:
    """'flat', 'hnsw', 'ivf' or 'ivfpq' for n vectors of dimension dim (see the module docstring)."""
    if options.index_type != "auto":
        if options.index_type not in INDEX_TYPES:
            raise ConfigError(
                f"unknown index type {options.index_type!r}: use one of {', '.join(INDEX_TYPES)}"
            )
        return options.index_type
    code_bytes = n * dim * options.code_bytes
    if n <= options.exact_max and code_bytes <= options.memory_budget_bytes:
        return "flat"
    if code_bytes + n * HNSW_M * 2 * 4 <= options.memory_budget_bytes:
        return "hnsw"
    return "ivf" if code_bytes <= options.memory_budget_bytes else "ivfpq"


def ivf_lists(n: int) -> int:
    """About 4 sqrt(N) lists, with at least 39 training points per list (FAISS's minimum)."""
    return int(max(1, min(4 * math.isqrt(max(n, 1)), n // 39, 65536)))


def pq_bytes(dim: int, budget_per_vector: float) -> int:
    """The largest sub-quantizer count dividing dim that fits the per-vector budget (at least 4)."""
    candidates = [m for m in range(4, dim + 1, 4) if dim % m == 0 and m <= max(4, budget_per_vector)]
    return max(candidates) if candidates else dim


def factory_string(kind: str, n: int, dim: int, options: IndexOptions) -> str:
    codes = STORAGE[options.storage][1]
    if kind == "flat":
        return codes
    if kind == "hnsw":
        return f"HNSW{HNSW_M}" + ("" if codes == "Flat" else f",{codes}")
    if kind == "ivf":
        return f"IVF{ivf_lists(n)},{codes}"
    return f"IVF{ivf_lists(n)},PQ{pq_bytes(dim, options.memory_budget_bytes / max(n, 1))}"


def build_index(
    vectors: np.ndarray, options: IndexOptions, queries: dict[str, np.ndarray] | None = None
) -> BuiltIndex:
    """Build the chosen index over (N, D) float32 unit vectors, tune it, and measure recall@10.

    Args:
        vectors: the gallery's vectors, row = id.
        options: index type, storage and tuning target.
        queries: the query kinds to tune on, by name, each (Q, D) float32 unit vectors: the
            teacher's species text embeddings ("species_text"), distilled audio embeddings
            ("audio"). Needed by every approximate index; the self-query recall is added to them.
    """
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
        index.train(sample_rows(vectors, 256 * ivf_lists(n), options.seed))
    if n:
        index.add(vectors)
    built = BuiltIndex(index, factory)
    if factory != "Flat":  # anything but exact float32 search is measured
        tune(built, vectors, kind, options, query_sets(vectors, queries or {}, options))
    built.build_seconds = time.perf_counter() - start
    log.info(
        "index %s over %d vectors: recall@10 %s (%s) in %.1f s",
        factory, n, {k: round(r["recall_at_10"], 4) for k, r in built.recall_by_query.items()} or 1.0,
        built.search_params or "exact", built.build_seconds,
    )  # fmt: skip
    return built


def sample_rows(vectors: np.ndarray, count: int, seed: int) -> np.ndarray:
    if len(vectors) <= count:
        return vectors
    rows = np.random.default_rng(seed).choice(len(vectors), size=count, replace=False)
    return vectors[np.sort(rows)]


def query_sets(
    vectors: np.ndarray, queries: dict[str, np.ndarray], options: IndexOptions
) -> dict[str, np.ndarray]:
    """The tuned query kinds (a sample of each) followed by the self-queries, which are only recorded."""
    tuned = {
        name: sample_rows(np.ascontiguousarray(q, dtype=np.float32), options.recall_queries, options.seed + 2)
        for name, q in queries.items()
        if len(q)
    }
    if not tuned:
        raise ConfigError(
            "an approximate index is tuned on the queries the service asks (the species' text embeddings, "
            "distilled audio embeddings); none were given"
        )
    dims = {name: q.shape[1] for name, q in tuned.items() if q.shape[1] != vectors.shape[1]}
    if dims:
        raise ConfigError(f"tuning queries {dims} do not match the gallery's dimension {vectors.shape[1]}")
    return {**tuned, SELF_QUERIES: sample_rows(vectors, options.recall_queries, options.seed + 1)}


def recall_at_k(found: np.ndarray, exact: np.ndarray, k: int = K) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k (-1 pads never count)."""
    hits = [len(set(f[:k].tolist()) & set(e[:k].tolist()) - {-1}) for f, e in zip(found, exact, strict=True)]
    denominators = [max(1, int((e[:k] >= 0).sum())) for e in exact]
    return float(np.mean([h / d for h, d in zip(hits, denominators, strict=True)])) if hits else 1.0


def exact_neighbours(queries: np.ndarray, vectors: np.ndarray, k: int = K) -> np.ndarray:
    """The exact top-k ids by inner product, computed in blocks (no second copy of the vectors)."""
    import faiss

    _, ids = faiss.knn(queries, vectors, min(k, len(vectors)), metric=faiss.METRIC_INNER_PRODUCT)
    return ids


def knob(index: Any, kind: str) -> tuple[str, list[int]]:
    """The query-time parameter of an index type and the values tried, cheapest first ('' for none)."""
    import faiss

    if kind == "hnsw":
        return "efSearch", [16, 32, 64, 128, 256, 512, 1024]
    if kind in ("ivf", "ivfpq"):
        nlist = faiss.extract_index_ivf(index).nlist
        return "nprobe", sorted({min(nlist, 2**i) for i in range(0, 17)})
    return "", [0]


def tune(
    built: BuiltIndex, vectors: np.ndarray, kind: str, options: IndexOptions, queries: dict[str, np.ndarray]
) -> None:
    """Raise efSearch / nprobe until every tuned query kind reaches the target recall@10 (or the knob's maximum).

    ``queries``' last entry is the self-queries: measured at each setting, never deciding it.
    """
    import faiss

    truth = {name: exact_neighbours(q, vectors) for name, q in queries.items()}
    tuned = [name for name in queries if name != SELF_QUERIES]
    name, values = knob(built.index, kind)
    space = faiss.ParameterSpace()
    for value in values:
        if name:
            space.set_index_parameter(built.index, name, value)
            built.search_params = {name: value}
        recall = {
            kind_: recall_at_k(built.index.search(q, K)[1], truth[kind_]) for kind_, q in queries.items()
        }
        built.recall_by_query = {
            kind_: {"recall_at_10": round(r, 4), "queries": len(queries[kind_])}
            for kind_, r in recall.items()
        }
        lowest = min(recall[kind_] for kind_ in tuned)
        built.recall_at_10 = round(lowest, 4)
        if lowest >= options.target_recall:
            break
    if built.recall_at_10 < options.target_recall:
        log.warning(
            "index %s reaches recall@10 %.3f at most (target %.3f): raise the memory budget for a finer index",
            built.factory, built.recall_at_10, options.target_recall,
        )  # fmt: skip
