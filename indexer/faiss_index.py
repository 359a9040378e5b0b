"""Choosing and building the FAISS index under a memory budget, and measuring its recall against exact search.

The rule (``index_plans``), for N vectors of dimension D and a memory budget that holds the index
*and* its build (the training sample, or the index with one block of vectors being added: ``build_peak``):

1. ``Flat`` (exact inner product) while N <= ``exact_max`` (default 250,000);
2. ``IVF{nlist}`` over the most precise codes that fit: float32 (``Flat``), float16 (``SQfp16``),
   8-bit (``SQ8``);
3. ``IVF{nlist},PQ{m}``, m = D/12 one-byte codes (64 for 768-d) and 8 bytes of id a vector, whose
   shortlist of ``k * k_factor`` candidates is re-ranked from a store on disk (8-bit codes of the
   vectors by default, read by row: see ``birdsearch.indexer.search.RerankStore``).

The first that fits is built and tuned; should it not reach the target recall, the next is built
(IVF-PQ comes last whatever the budget, with an 8-bit re-rank store, then float16, then the
vectors themselves). HNSW is not among auto's picks: on the cross-modal queries the service asks
it needed efSearch 1024 at 1M vectors and was 4.8x slower than IVF, both past the target
(BENCHMARKS.md, "Index at scale"), the known weakness of graph indexes for queries from another
distribution; it is built when asked for (``index_type='hnsw'``).

``storage`` pins the encoding: the codes of Flat, HNSW and IVF, or IVF-PQ's re-rank store (where
float32 re-ranks from the version's own vectors.npy, with no second file). ``auto`` takes the most
precise codes that fit: at equal nprobe they need no re-ranking and searched faster (BENCHMARKS.md).

k-means trains on a sample of ``TRAIN_PER_LIST`` (64) points a list, and the PQ's sub-quantizers
on 64 a centroid (FAISS asks 39 to 256), so a 10M build clusters 262,144 points, not millions.
Vectors are added block by block from a ``VectorRows`` (a .npy read with plain reads), so the
gallery is never in memory at once.

The query-time knob (efSearch or nprobe; for IVF-PQ then k_factor) is raised until recall@10
against exact search reaches ``target_recall`` on the queries the service really asks: the
teacher's text embeddings of the gallery's species, and distilled audio embeddings when given. The
gallery's own vectors ("self" queries) are a different distribution (images, not text or audio)
and reach a higher recall at the same setting, so their recall is recorded beside the others but
never tuned on.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from birdsearch.errors import ConfigError
from birdsearch.indexer.search import (
    RERANK_PARAM,
    STORE_ENCODINGS,
    FaissSearcher,
    RerankStore,
    encode_rows,
    sq8_range,
    topk_numpy,
)
from birdsearch.indexer.store import BLOCK_ROWS, RERANK_FILE, RERANK_RANGE_FILE, VectorRows, write_npy

log = logging.getLogger(__name__)

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq")
HNSW_M = 32
HNSW_GRAPH_BYTES = (
    HNSW_M * 2 * 4 + 16
)  # level-0 links, upper levels and offsets: 268 B a vector measured at 1M
# How the index stores vectors: bytes per component and FAISS's name for the encoding, most precise first.
STORAGE: dict[str, tuple[int, str]] = {"float32": (4, "Flat"), "float16": (2, "SQfp16"), "sq8": (1, "SQ8")}
STORAGES = ("auto", *STORAGE)
# auto's re-rank stores: 8-bit codes (a quarter of float32, so the page cache holds more of them),
# then float16, then the vectors themselves, should they not reach the target recall (near-duplicates
# closer than their steps).
RERANK_STORES = ("sq8", "float16", "float32")
ID_BYTES = 8  # an IVF list stores each vector's int64 id beside its code
LIST_BYTES = 64  # and each list its sizes and two vectors' headers
NLIST_MAX = (
    4096  # assigning N vectors costs N * nlist * D multiply-adds: 10M x 4,096 x 768 is ~10 min on 2 cores
)
BUILD_BLOCK_COPIES = 3  # a block read, and its residuals and codes while it is added
# FAISS grows an index's arrays (each IVF list's codes and ids) by doubling as blocks are added, so a
# build holds up to twice the codes; 1.44x and 1.48x were measured for IVF over 1M vectors.
GROWTH = 1.5
TRAIN_PER_LIST = 64  # k-means training points per list (and per PQ centroid); FAISS asks 39 to 256
PQ_DIMS_PER_BYTE = 12  # components per one-byte PQ sub-quantizer: 64 bytes for 768-d
K_FACTORS = (1, 2, 4, 8, 16, 32, 64)  # shortlist multipliers tried for a re-ranked index
SELF_QUERIES = "self"  # recall of the gallery's own vectors: recorded, never tuned on
K = 10


@dataclass(frozen=True)
class IndexOptions:
    """How the index type is chosen and tuned."""

    index_type: str = "auto"  # auto, flat, hnsw, ivf or ivfpq
    exact_max: int = 250_000  # largest gallery searched exactly
    memory_budget_bytes: int = 16 * 1024**3  # the index and its build must fit in this much RAM
    target_recall: float = 0.95  # recall@10 vs exact that efSearch / nprobe are tuned to reach
    recall_queries: int = 1000  # queries of each kind used to measure recall (a sample when more)
    storage: str = "auto"  # codes of flat/hnsw/ivf, or IVF-PQ's re-rank store: auto, float32, float16, sq8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise ConfigError(f"unknown index type {self.index_type!r}: use one of {', '.join(INDEX_TYPES)}")
        if self.storage not in STORAGES:
            raise ConfigError(f"unknown vector storage {self.storage!r}: use one of {', '.join(STORAGES)}")
        if not 0.0 < self.target_recall <= 1.0:
            raise ConfigError(f"target_recall must be in (0, 1], got {self.target_recall}")
        if self.memory_budget_bytes <= 0:
            raise ConfigError(f"the memory budget must be positive, got {self.memory_budget_bytes} bytes")


@dataclass(frozen=True)
class IndexPlan:
    """One index to build: its kind, encoding, FAISS factory string and the memory it needs."""

    kind: str  # flat, hnsw, ivf or ivfpq
    storage: str  # codes of flat/hnsw/ivf; the re-rank store of ivfpq
    factory: str  # FAISS factory string, e.g. "Flat", "HNSW32", "IVF4096,SQ8", "IVF4096,PQ64"
    index_bytes: int  # what the built index holds in memory
    peak_bytes: int  # what building it holds at most (see ``build_peak``): what must fit the budget

    @property
    def exact(self) -> bool:
        return self.factory == "Flat"

    @property
    def description(self) -> str:
        return f"{self.factory}, re-ranked from {self.storage}" if self.kind == "ivfpq" else self.factory


@dataclass
class BuiltIndex:
    """A built index and the facts the manifest records about it."""

    index: Any
    plan: IndexPlan
    rerank: RerankStore | None = None  # IVF-PQ's re-rank store
    rerank_files: list[Path] = field(default_factory=list)  # the files it wrote (removed if discarded)
    search_params: dict[str, int] = field(default_factory=dict)  # efSearch / nprobe, k_factor
    recall_at_10: float = 1.0  # the lowest recall among the tuned query kinds, at search_params
    recall_by_query: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> recall, queries
    build_seconds: float = 0.0
    tried: list[dict[str, Any]] = field(default_factory=list)  # plans built before this one fell short

    @property
    def factory(self) -> str:
        return self.plan.factory

    @property
    def recall_queries(self) -> int:
        """Queries measured, all kinds together."""
        return int(sum(r["queries"] for r in self.recall_by_query.values()))

    def manifest(self, budget: int) -> dict[str, Any]:
        """What a version's manifest records about its index (``index_type`` is the FAISS factory)."""
        facts: dict[str, Any] = {
            "index_type": self.factory,
            "search_params": self.search_params,
            "recall_at_10": self.recall_at_10,  # the lowest among the tuned query kinds
            "recall_by_query": self.recall_by_query,  # species_text, audio (tuned on), self (recorded)
            "recall_queries": self.recall_queries,
            "index_plan": {
                "kind": self.plan.kind,
                "storage": self.plan.storage,
                "index_bytes": self.plan.index_bytes,
                "peak_bytes": self.plan.peak_bytes,
                "memory_budget_bytes": budget,
                "tried": self.tried,
            },
        }
        if self.rerank is not None:
            facts["rerank"] = {"encoding": self.rerank.encoding}
        return facts

    def discard(self) -> None:
        for file in self.rerank_files:
            file.unlink(missing_ok=True)


def ivf_lists(n: int) -> int:
    """About 4 sqrt(N) lists, at most NLIST_MAX, with at least 39 training points per list (FAISS's minimum)."""
    return int(max(1, min(4 * math.isqrt(max(n, 1)), n // 39, NLIST_MAX)))


def pq_bytes(dim: int) -> int:
    """Sub-quantizers of IVF-PQ: the divisor of dim nearest dim / PQ_DIMS_PER_BYTE (64 for 768-d)."""
    divisors = [m for m in range(1, dim + 1) if dim % m == 0]
    return min(divisors, key=lambda m: (abs(m - dim / PQ_DIMS_PER_BYTE), -m))


def pq_bits(n: int) -> int:
    """Bits a PQ code: 8 (256 centroids a sub-quantizer), fewer for a gallery too small to train 256."""
    return max(1, min(8, int(math.log2(max(n, 2))) - 2))


def training_rows(n: int) -> int:
    """Points k-means trains on: TRAIN_PER_LIST a list, or every vector of a small gallery."""
    return min(n, TRAIN_PER_LIST * ivf_lists(n))


def plan(kind: str, storage: str, n: int, dim: int) -> IndexPlan:
    """The factory string and memory of one index kind with one encoding."""
    width, codes = STORAGE[storage]
    nlist = ivf_lists(n)
    centroids = nlist * (dim * 4 + LIST_BYTES)
    if kind == "flat":
        factory, index_bytes = codes, n * dim * width
    elif kind == "hnsw":
        factory = f"HNSW{HNSW_M}" + ("" if codes == "Flat" else f",{codes}")
        index_bytes = n * (dim * width + HNSW_GRAPH_BYTES)
    elif kind == "ivf":
        factory, index_bytes = f"IVF{nlist},{codes}", n * (dim * width + ID_BYTES) + centroids
    else:
        m, bits = pq_bytes(dim), pq_bits(n)
        factory = f"IVF{nlist},PQ{m}" + ("" if bits == 8 else f"x{bits}")
        index_bytes = n * (math.ceil(m * bits / 8) + ID_BYTES) + centroids + 2**bits * dim * 4
    return IndexPlan(kind, storage, factory, index_bytes, build_peak(kind, storage, n, dim, index_bytes))


def build_peak(kind: str, storage: str, n: int, dim: int, index_bytes: int) -> int:
    """The most a build holds at once: while training, the sample (twice where IVF trains its codes
    on the sample's residuals: PQ, scalar quantisers); while adding, the growing index (its arrays
    grow by doubling: GROWTH) and a block of vectors with its working copies (residuals, codes).
    The sample is released before adding."""
    trains = kind in ("ivf", "ivfpq") or storage == "sq8"  # float16 needs no training
    residuals = kind == "ivfpq" or (kind == "ivf" and storage != "float32")
    training = (training_rows(n) if trains else 0) * dim * 4 * (2 if residuals else 1)
    adding = int(GROWTH * index_bytes) + BUILD_BLOCK_COPIES * min(n, BLOCK_ROWS) * dim * 4
    return max(training, adding)


def index_plans(n: int, dim: int, options: IndexOptions) -> list[IndexPlan]:
    """The indexes to try, in order (see the module docstring): the first reaching the target recall is kept."""
    storages = list(STORAGE) if options.storage == "auto" else [options.storage]
    stores = RERANK_STORES if options.storage == "auto" else (options.storage,)
    compact = [plan("ivfpq", store, n, dim) for store in stores]
    if n < 2:
        return [plan("flat", "float32", n, dim)]  # nothing to train on
    if options.index_type == "ivfpq":
        return compact
    if options.index_type == "auto":
        kinds = (["flat"] if n <= options.exact_max else []) + ["ivf"]
        candidates = [plan(kind, s, n, dim) for kind in kinds for s in storages]
        # The compact index comes last whatever the budget: it is the smallest there is.
        return [p for p in candidates if fits(p, options)] + compact
    candidates = [plan(options.index_type, s, n, dim) for s in storages]
    within = [p for p in candidates if fits(p, options)]
    if not within:
        log.warning(
            "%s needs %.1f GiB with its build, over the memory budget of %.1f GiB",
            candidates[-1].factory, candidates[-1].peak_bytes / 2**30,
            options.memory_budget_bytes / 2**30,
        )  # fmt: skip
    return within[:1] or candidates[-1:]


def fits(planned: IndexPlan, options: IndexOptions) -> bool:
    return planned.peak_bytes <= options.memory_budget_bytes


def choose_index_type(n: int, dim: int, options: IndexOptions) -> str:
    """The kind auto builds first for n vectors of dimension dim: 'flat', 'hnsw', 'ivf' or 'ivfpq'."""
    return index_plans(n, dim, options)[0].kind


def build_index(
    vectors: np.ndarray | VectorRows,
    options: IndexOptions,
    queries: dict[str, np.ndarray] | None = None,
    directory: Path | None = None,
) -> BuiltIndex:
    """Build the chosen index over (N, D) unit vectors, tune it, and measure recall@10.

    Args:
        vectors: the gallery's vectors, row = id: an array, or a ``VectorRows`` over a .npy file
            (read block by block: the file is never in memory at once).
        options: index type, storage, memory budget and tuning target.
        queries: the query kinds to tune on, by name, each (Q, D) float32 unit vectors: the
            teacher's species text embeddings ("species_text"), distilled audio embeddings
            ("audio"). Needed by every approximate index; the self-query recall is added to them.
        directory: where an IVF-PQ index writes its re-rank store (the version's staging folder).
    """
    start = time.perf_counter()
    rows = vectors if isinstance(vectors, VectorRows) else VectorRows(np.asarray(vectors))
    plans = index_plans(len(rows), rows.dim, options)
    tried: list[dict[str, Any]] = []
    tuning: dict[str, np.ndarray] = {}
    truth: dict[str, np.ndarray] = {}
    for i, planned in enumerate(plans):
        built = build_planned(planned, rows, options, directory)
        built.tried = list(tried)
        if planned.exact:
            break
        if not tuning:
            tuning = query_sets(rows, queries or {}, options)
            truth = exact_neighbours_by_kind(tuning, rows)
        tune(built, options, tuning, truth)
        if built.recall_at_10 >= options.target_recall or i == len(plans) - 1:
            break
        log.info(
            "%s reaches recall@10 %.3f at most, short of %.3f: building %s instead",
            planned.description, built.recall_at_10, options.target_recall, plans[i + 1].description,
        )  # fmt: skip
        tried.append({"index_type": planned.description, "recall_at_10": built.recall_at_10})
        built.discard()
    if built.recall_at_10 < options.target_recall:
        log.warning(
            "index %s reaches recall@10 %.3f at most (target %.3f): raise the memory budget for a finer index",
            built.plan.description, built.recall_at_10, options.target_recall,
        )  # fmt: skip
    built.build_seconds = time.perf_counter() - start
    log.info(
        "index %s over %d vectors: recall@10 %s (%s) in %.1f s",
        built.plan.description, len(rows),
        {k: round(r["recall_at_10"], 4) for k, r in built.recall_by_query.items()} or 1.0,
        built.search_params or "exact", built.build_seconds,
    )  # fmt: skip
    return built


def build_planned(
    planned: IndexPlan, rows: VectorRows, options: IndexOptions, directory: Path | None
) -> BuiltIndex:
    """Train on a sample, then add every block of ``rows`` (and write IVF-PQ's re-rank store in the same pass)."""
    import faiss

    index = faiss.index_factory(rows.dim, planned.factory, faiss.METRIC_INNER_PRODUCT)
    if planned.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efConstruction = 80
    store_range = None
    if not index.is_trained:
        sample = rows.take(sample_ids(len(rows), training_rows(len(rows)), options.seed))
        faiss.ParameterSpace().set_index_parameter(index, "verbose", 0)
        if planned.kind == "ivfpq":
            ivfpq = faiss.downcast_index(index)
            ivfpq.pq.cp.max_points_per_centroid = TRAIN_PER_LIST
            ivfpq.pq.cp.niter = 10  # as FAISS's IVF k-means; the re-ranking corrects what coarser codes miss
            ivfpq.do_polysemous_training = False  # Hamming filtering we never use: most of the training time
            store_range = sq8_range(sample) if planned.storage == "sq8" else None
        index.train(sample)
        del sample  # released before the index fills (see build_peak)
    if planned.kind == "ivfpq":
        return add_with_rerank_store(index, planned, rows, store_range, directory)
    for _, block in rows.blocks():
        index.add(block)
    return BuiltIndex(index, planned)


def add_with_rerank_store(
    index: Any,
    planned: IndexPlan,
    rows: VectorRows,
    store_range: tuple[np.ndarray, np.ndarray] | None,
    directory: Path | None,
) -> BuiltIndex:
    """Add every block to the index and write its re-rank store from the same pass over the vectors."""
    if planned.storage == "float32":  # the vectors themselves: nothing more to write
        for _, block in rows.blocks():
            index.add(block)
        return BuiltIndex(index, planned, RerankStore(rows))
    if directory is None:
        raise ConfigError("an IVF-PQ index writes its re-rank store beside it: give build_index a directory")
    low, step = store_range or (None, None)

    def added_and_encoded() -> Any:
        for _, block in rows.blocks():
            index.add(block)
            yield encode_rows(block, planned.storage, low, step)

    store_file = Path(directory) / RERANK_FILE
    write_npy(store_file, rows.shape, STORE_ENCODINGS[planned.storage], added_and_encoded())
    files = [store_file]
    if low is not None and step is not None:
        np.save(Path(directory) / RERANK_RANGE_FILE, np.stack([low, step]))
        files.append(Path(directory) / RERANK_RANGE_FILE)
    return BuiltIndex(index, planned, RerankStore(VectorRows(store_file), low, step), files)


def sample_ids(n: int, count: int, seed: int) -> np.ndarray:
    """``count`` distinct row ids in [0, n), sorted (all of them when count >= n)."""
    if n <= count:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))


def query_sets(
    rows: VectorRows, queries: dict[str, np.ndarray], options: IndexOptions
) -> dict[str, np.ndarray]:
    """The tuned query kinds (a sample of each) followed by the self-queries, which are only recorded."""
    tuned = {}
    for name, q in queries.items():
        if len(q):  # sampled before it is copied: q may be a memory map of many rows
            tuned[name] = np.ascontiguousarray(
                np.asarray(q)[sample_ids(len(q), options.recall_queries, options.seed + 2)], dtype=np.float32
            )
    if not tuned:
        raise ConfigError(
            "an approximate index is tuned on the queries the service asks (the species' text embeddings, "
            "distilled audio embeddings); none were given"
        )
    dims = {name: q.shape[1] for name, q in tuned.items() if q.shape[1] != rows.dim}
    if dims:
        raise ConfigError(f"tuning queries {dims} do not match the gallery's dimension {rows.dim}")
    self_queries = rows.take(sample_ids(len(rows), options.recall_queries, options.seed + 1))
    return {**tuned, SELF_QUERIES: self_queries}


def recall_at_k(found: np.ndarray, exact: np.ndarray, k: int = K) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k (-1 pads never count)."""
    hits = [len(set(f[:k].tolist()) & set(e[:k].tolist()) - {-1}) for f, e in zip(found, exact, strict=True)]
    denominators = [max(1, int((e[:k] >= 0).sum())) for e in exact]
    return float(np.mean([h / d for h, d in zip(hits, denominators, strict=True)])) if hits else 1.0


def exact_neighbours(queries: np.ndarray, vectors: np.ndarray | VectorRows, k: int = K) -> np.ndarray:
    """The exact top-k ids by inner product, one block of vectors at a time (-1 where fewer than k exist)."""
    import faiss

    rows = vectors if isinstance(vectors, VectorRows) else VectorRows(np.asarray(vectors))
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    best = np.empty((len(queries), 0), np.float32)
    ids = np.empty((len(queries), 0), np.int64)
    for start, block in rows.blocks():
        scores, found = faiss.knn(queries, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        best, cols = topk_numpy(np.concatenate([best, scores], axis=1), k)
        ids = np.take_along_axis(np.concatenate([ids, found + start], axis=1), cols, axis=1)
    if ids.shape[1] < k:
        ids = np.concatenate([ids, np.full((len(queries), k - ids.shape[1]), -1, np.int64)], axis=1)
    return ids


def exact_neighbours_by_kind(queries: dict[str, np.ndarray], rows: VectorRows) -> dict[str, np.ndarray]:
    """The exact top-k of every query kind, from one pass over the vectors."""
    names = list(queries)
    ids = exact_neighbours(np.concatenate([queries[name] for name in names]), rows)
    bounds = np.cumsum([0] + [len(queries[name]) for name in names])
    return {name: ids[a:b] for name, a, b in zip(names, bounds[:-1], bounds[1:], strict=True)}


def knob(index: Any, kind: str) -> tuple[str, list[int]]:
    """The query-time parameter of an index type and the values tried, cheapest first ('' for none)."""
    import faiss

    if kind == "hnsw":
        return "efSearch", [16, 32, 64, 128, 256, 512, 1024]
    if kind in ("ivf", "ivfpq"):
        nlist = faiss.extract_index_ivf(index).nlist
        return "nprobe", sorted({min(nlist, 2**i) for i in range(0, 17)})
    return "", [0]


def measure(
    built: BuiltIndex, params: dict[str, int], queries: dict[str, np.ndarray], truth: dict[str, np.ndarray]
) -> float:
    """Search every query kind at ``params`` through the service's searcher; records and returns the tuned recall."""
    searcher = FaissSearcher(built.index, None, params, built.rerank)
    recall = {kind: recall_at_k(searcher.search(q, K)[1], truth[kind]) for kind, q in queries.items()}
    built.search_params = dict(params)
    built.recall_by_query = {
        kind: {"recall_at_10": round(r, 4), "queries": len(queries[kind])} for kind, r in recall.items()
    }
    built.recall_at_10 = round(min(r for kind, r in recall.items() if kind != SELF_QUERIES), 4)
    return built.recall_at_10


def tune(
    built: BuiltIndex, options: IndexOptions, queries: dict[str, np.ndarray], truth: dict[str, np.ndarray]
) -> None:
    """Raise efSearch / nprobe until every tuned query kind reaches the target recall@10 (or the knob's maximum).

    A re-ranked index is searched with the longest shortlist meanwhile; at the nprobe found, k_factor
    is then lowered while the target holds. ``queries``' last entry, the self-queries, is measured at
    each setting, never deciding it.
    """
    name, values = knob(built.index, built.plan.kind)
    widest = {RERANK_PARAM: K_FACTORS[-1]} if built.rerank is not None else {}
    for value in values:
        params = {name: value, **widest} if name else {}
        if measure(built, params, queries, truth) >= options.target_recall:
            break
    if not widest or built.recall_at_10 < options.target_recall:
        return
    kept = (dict(built.search_params), built.recall_by_query, built.recall_at_10)
    for k_factor in reversed(K_FACTORS[:-1]):
        if measure(built, {**kept[0], RERANK_PARAM: k_factor}, queries, truth) < options.target_recall:
            break
        kept = (dict(built.search_params), built.recall_by_query, built.recall_at_10)
    built.search_params, built.recall_by_query, built.recall_at_10 = kept
