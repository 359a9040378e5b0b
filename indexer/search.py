"""Nearest-neighbour search over an index version: CPU FAISS, FAISS on a GPU, or exact torch search.

Every backend answers the same question the same way: inner product between unit vectors, the
``k`` best per query, ``-1`` ids and ``-inf`` scores where fewer than ``k`` candidates exist, and,
given ``ids``, a search restricted to that subset. The torch backend is an exact search, so for an
exact (``Flat``) index it returns what CPU FAISS returns; for an approximate index it returns the
exact neighbours, which the approximate index finds with the recall stored in the manifest.

A compressed index (IVF-PQ) answers a shortlist of ``k * k_factor`` candidates from its codes, and
``RerankStore`` re-scores them from fuller vectors on disk (float32, float16 or 8-bit), memory-mapped
so that a search reads only the rows it re-scores: the searcher the service uses does this, with the
``k_factor`` the build tuned and recorded in the manifest's search parameters.

All backends are safe for concurrent readers: nothing is mutated after construction.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from birdsearch.errors import ConfigError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "faiss", "faiss-gpu", "torch")
# A filtered search over at most this many ids gathers their vectors and scores them exactly:
# faster than an ID selector over a large index, and exact whatever the index type.
EXACT_SUBSET_MAX = 200_000
# Queries scored per torch matrix product, to bound the (Q, N) score matrix.
TORCH_QUERY_CHUNK = 256
# Database rows per torch matrix product, to bound memory on large galleries.
TORCH_ROW_CHUNK = 1 << 20
# The shortlist multiplier of a re-ranked search: a search parameter of ours, not FAISS's.
RERANK_PARAM = "k_factor"
# How a re-rank store holds each component (the numpy type its file holds).
STORE_ENCODINGS: dict[str, Any] = {"float32": np.float32, "float16": np.float16, "sq8": np.uint8}
# Candidate components gathered per re-ranking step (queries x shortlist x D), to bound its memory.
RERANK_CHUNK = 1 << 23


class Searcher(Protocol):
    def search(
        self, queries: np.ndarray, k: int, ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...


def check_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    """Queries as a C-contiguous (Q, dim) float32 array; a single vector becomes (1, dim)."""
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise ConfigError(
            f"queries of shape {tuple(np.shape(queries))} do not fit this index: expected (Q, {dim})"
        )
    return np.ascontiguousarray(q)


def check_ids(ids: np.ndarray | None, count: int) -> np.ndarray | None:
    """A sorted, unique int64 id subset within [0, count); None means every image."""
    if ids is None:
        return None
    subset = np.unique(np.asarray(ids, dtype=np.int64).ravel())
    if subset.size and (subset[0] < 0 or subset[-1] >= count):
        bad = subset[(subset < 0) | (subset >= count)][:5].tolist()
        raise ConfigError(f"image ids {bad} are outside this index (0..{count - 1})")
    return subset


def pad_results(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Widen (Q, m) results to (Q, k) with -inf scores and -1 ids; FAISS's -FLT_MAX pads become -inf."""
    q, m = ids.shape
    out_scores = np.full((q, k), -np.inf, dtype=np.float32)
    out_ids = np.full((q, k), -1, dtype=np.int64)
    out_scores[:, :m] = scores[:, :k]
    out_ids[:, :m] = ids[:, :k]
    out_scores[out_ids < 0] = -np.inf
    return out_scores, out_ids


def topk_numpy(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest entries of each row of (Q, M) scores, best first, as (scores, column indices)."""
    m = scores.shape[1]
    kk = min(k, m)
    if kk == 0:
        return np.empty((scores.shape[0], 0), np.float32), np.empty((scores.shape[0], 0), np.int64)
    part = (
        np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        if kk < m
        else np.tile(np.arange(m), (len(scores), 1))
    )
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part_scores, order, axis=1), np.take_along_axis(part, order, axis=1).astype(
        np.int64
    )


def exact_subset_search(
    vectors: np.ndarray, queries: np.ndarray, k: int, subset: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search over ``vectors[subset]`` (what IndexFlatIP with an ID selector returns)."""
    if subset.size == 0:
        return pad_results(np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64), k)
    candidates = np.asarray(vectors[subset], dtype=np.float32)  # (S, D), gathered from the memory map
    scores, cols = topk_numpy(queries @ candidates.T, k)  # (Q, S) -> (Q, k)
    return pad_results(scores, subset[cols], k)


class Rows(Protocol):
    """(N, D) stored vectors read by row ids (``birdsearch.indexer.store.VectorRows``)."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def take(self, ids: np.ndarray) -> np.ndarray: ...


class RerankStore:
    """The vectors a compressed index's shortlist is re-scored from, row = image id.

    ``rows`` hold (N, D) float32 (the version's own vectors), float16, or 8-bit codes (uint8) that
    decode as ``low + code * step`` per component. They are read from disk by row (``pread``), so a
    search reads the rows it re-scores and nothing else, and they count in no process's memory
    (the kernel's page cache keeps what is read often).
    """

    def __init__(self, rows: Rows, low: np.ndarray | None = None, step: np.ndarray | None = None):
        encodings = {np.dtype(t): name for name, t in STORE_ENCODINGS.items()}
        if len(rows.shape) != 2 or rows.dtype not in encodings:
            raise ConfigError(
                f"a re-rank store holds (N, D) float32, float16 or uint8, not {rows.dtype} {rows.shape}"
            )
        self.encoding = encodings[rows.dtype]
        if self.encoding == "sq8" and (low is None or step is None):
            raise ConfigError("an 8-bit re-rank store needs the low end and step of each component")
        self.rows, self.low, self.step = rows, low, step

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` decoded to float32, (len(ids), D)."""
        rows = self.rows.take(ids)
        return self.low + rows * self.step if self.encoding == "sq8" else rows

    def rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` of each query's (Q, S) candidate ids (-1: none) by inner product with the stored rows."""
        q, s = candidates.shape
        per_step = max(1, RERANK_CHUNK // max(1, s * self.rows.shape[1]))
        best_scores, best_ids = [], []
        for start in range(0, q, per_step):
            cand = candidates[start : start + per_step]
            valid = cand >= 0
            rows = self.vectors(np.where(valid, cand, 0).ravel()).reshape(*cand.shape, -1)
            scores = np.einsum("qsd,qd->qs", rows, queries[start : start + per_step])
            scores[~valid] = -np.inf
            top, cols = topk_numpy(scores, k)
            best_scores.append(top)
            best_ids.append(np.take_along_axis(cand, cols, axis=1))
        if not best_scores:
            return pad_results(np.empty((0, 0), np.float32), np.empty((0, 0), np.int64), k)
        return pad_results(np.concatenate(best_scores), np.concatenate(best_ids), k)


def sq8_range(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each component's low end and step for 8-bit codes, from a sample's range (values outside it clip)."""
    low = sample.min(axis=0).astype(np.float32)
    step = np.maximum((sample.max(axis=0) - low) / 255, 1e-12).astype(np.float32)
    return low, step


def encode_rows(
    block: np.ndarray, encoding: str, low: np.ndarray | None = None, step: np.ndarray | None = None
) -> np.ndarray:
    """Rows in a re-rank store's encoding (``low`` and ``step`` from ``sq8_range`` for sq8)."""
    if encoding == "sq8":
        assert low is not None and step is not None
        scaled = block - low  # one temporary, worked in place: this runs on blocks of the whole gallery
        scaled /= step
        np.rint(scaled, out=scaled)
        return np.clip(scaled, 0, 255, out=scaled).astype(np.uint8)
    return np.asarray(block, dtype=STORE_ENCODINGS[encoding])


class FaissSearcher:
    """Search with a FAISS index (CPU, or moved to a GPU when faiss-gpu is installed).

    With a ``rerank`` store, the index answers ``k * k_factor`` candidates (``k_factor`` from the
    search parameters) and the store's vectors rank them.
    """

    def __init__(
        self,
        index: Any,
        vectors: np.ndarray | None,
        search_params: dict[str, Any] | None = None,
        rerank: RerankStore | None = None,
    ):
        self.index = index
        self.vectors = vectors  # (N, D) memory map, for exact filtered search
        self.params = {k: v for k, v in (search_params or {}).items() if k != RERANK_PARAM}
        self.rerank = rerank
        self.k_factor = int((search_params or {}).get(RERANK_PARAM, 1)) if rerank is not None else 1
        apply_search_params(index, self.params)

    def search(
        self, queries: np.ndarray, k: int, ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if ids is not None and (ids.size <= EXACT_SUBSET_MAX or self.on_gpu):
            if self.vectors is None:
                raise ConfigError("this searcher has no vectors for a filtered search")
            return exact_subset_search(self.vectors, queries, k, ids)
        kk = min(k * self.k_factor, self.index.ntotal)
        if kk == 0:
            return pad_results(
                np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64), k
            )
        params = selector_params(self.index, ids, self.params) if ids is not None else None
        scores, found = (
            self.index.search(queries, kk, params=params) if params else self.index.search(queries, kk)
        )
        if self.rerank is not None:
            return self.rerank.rerank(queries, found, k)
        return pad_results(scores, found, k)

    @property
    def on_gpu(self) -> bool:
        # GPU indexes take no ID selector: filtered searches are exact gathers instead.
        return hasattr(self.index, "getDevice")


def apply_search_params(index: Any, params: dict[str, Any]) -> None:
    """Set the tuned query-time parameters (nprobe, efSearch) stored in the manifest."""
    import faiss

    if not params:
        return
    faiss.ParameterSpace().set_index_parameters(index, ",".join(f"{k}={v}" for k, v in params.items()))


def selector_params(index: Any, ids: np.ndarray, params: dict[str, Any]) -> Any:
    """FAISS search parameters restricting a search to ``ids``, keeping the tuned nprobe/efSearch."""
    import faiss

    selector = faiss.IDSelectorBatch(ids)
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        out = faiss.SearchParametersHNSW(sel=selector, efSearch=int(params.get("efSearch", 16)))
    elif isinstance(inner, faiss.IndexIVF):
        out = faiss.SearchParametersIVF(sel=selector, nprobe=int(params.get("nprobe", 1)))
    else:
        out = faiss.SearchParameters(sel=selector)
    out._selector = selector  # keep the selector alive as long as the parameters
    return out


class TorchSearcher:
    """Exact inner-product search with torch, on a GPU or the CPU, over float32 vectors.

    Float32 (no TF32) keeps the scores, and so the neighbours, those of CPU FAISS's IndexFlatIP.
    """

    def __init__(self, vectors: np.ndarray, device: Any = "cpu"):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        # A writable float32 copy (torch refuses read-only memory maps), then onto the device.
        self.vectors = torch.from_numpy(np.array(vectors, dtype=np.float32)).to(self.device)
        self.host_vectors = vectors

    def search(
        self, queries: np.ndarray, k: int, ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        rows = self.vectors if ids is None else self.vectors[torch.from_numpy(ids).to(self.device)]
        n = rows.shape[0]
        kk = min(k, n)
        q_all = torch.from_numpy(queries).to(self.device)
        out_scores, out_ids = [], []
        for start in range(0, len(queries), TORCH_QUERY_CHUNK):
            scores, cols = self.topk(q_all[start : start + TORCH_QUERY_CHUNK], rows, kk)
            out_scores.append(scores)
            out_ids.append(cols)
        scores = np.concatenate(out_scores) if out_scores else np.empty((0, kk), np.float32)
        cols = np.concatenate(out_ids) if out_ids else np.empty((0, kk), np.int64)
        found = cols if ids is None else ids[cols]
        return pad_results(scores, found, k)

    def topk(self, q: Any, rows: Any, kk: int) -> tuple[np.ndarray, np.ndarray]:
        """Best ``kk`` of (B, D) queries against (N, D) rows, merging chunks of rows."""
        torch = self.torch
        best_scores = torch.empty((len(q), 0), device=self.device)
        best_ids = torch.empty((len(q), 0), dtype=torch.int64, device=self.device)
        if kk == 0:
            return best_scores.cpu().numpy(), best_ids.cpu().numpy()
        with precise_matmul(torch):
            for start in range(0, rows.shape[0], TORCH_ROW_CHUNK):
                chunk = rows[start : start + TORCH_ROW_CHUNK]
                scores = q @ chunk.T  # (B, chunk)
                s, i = torch.topk(scores, min(kk, chunk.shape[0]), dim=1)
                best_scores = torch.cat([best_scores, s], dim=1)
                best_ids = torch.cat([best_ids, i + start], dim=1)
                if best_scores.shape[1] > kk:
                    best_scores, pick = torch.topk(best_scores, kk, dim=1)
                    best_ids = torch.gather(best_ids, 1, pick)
        return best_scores.float().cpu().numpy(), best_ids.cpu().numpy()


class ShardedSearcher:
    """One search over several shards, each a searcher over a contiguous block of image ids.

    What FAISS's ``IndexShards`` does for one query batch: every shard answers the ``k`` best of its
    block, the answers are shifted to global ids and merged. Shards may sit on different GPUs, or on
    one, to bound the size of one allocation. Filtered searches pass each shard its part of the ids.
    """

    def __init__(self, shards: list[Searcher], sizes: list[int]):
        if len(shards) != len(sizes) or not shards:
            raise ConfigError(f"{len(shards)} shards for {len(sizes)} sizes: give one size per shard")
        self.shards = shards
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(
            np.int64
        )  # shard i: [starts[i], starts[i+1])

    def search(
        self, queries: np.ndarray, k: int, ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        parts_scores, parts_ids = [], []
        for shard, start, end in zip(self.shards, self.starts[:-1], self.starts[1:], strict=True):
            local = None
            if ids is not None:
                local = ids[(ids >= start) & (ids < end)] - start
                if local.size == 0:
                    continue
            scores, found = shard.search(queries, k, local)
            parts_scores.append(scores)
            parts_ids.append(np.where(found >= 0, found + start, -1))
        if not parts_scores:
            empty = np.empty((len(queries), 0))
            return pad_results(empty.astype(np.float32), empty.astype(np.int64), k)
        scores = np.concatenate(parts_scores, axis=1)  # (Q, shards * k)
        found = np.concatenate(parts_ids, axis=1)
        best, cols = topk_numpy(scores, k)
        return pad_results(best, np.take_along_axis(found, cols, axis=1), k)


def torch_shards(vectors: np.ndarray, shards: int, devices: list[str]) -> ShardedSearcher:
    """Exact torch search over ``vectors`` cut into ``shards`` contiguous blocks, dealt round-robin
    over ``devices`` (several GPUs, or one GPU several times)."""
    if shards < 1 or not devices:
        raise ConfigError(f"need at least one shard and one device, not {shards} shards on {devices}")
    bounds = np.linspace(0, len(vectors), shards + 1).astype(np.int64)
    blocks = [vectors[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    searchers: list[Searcher] = [
        TorchSearcher(block, devices[i % len(devices)]) for i, block in enumerate(blocks)
    ]
    return ShardedSearcher(searchers, [len(b) for b in blocks])


class precise_matmul:
    """Turn TF32 off for a block: TF32's 10-bit mantissa would reorder close neighbours."""

    def __init__(self, torch: Any):
        self.torch = torch

    def __enter__(self) -> None:
        self.saved = self.torch.backends.cuda.matmul.allow_tf32
        self.torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc: Any) -> None:
        self.torch.backends.cuda.matmul.allow_tf32 = self.saved


def faiss_has_gpu() -> bool:
    """True when the installed FAISS is a GPU build and sees a device."""
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def make_searcher(
    index_loader: Any,
    vectors: np.ndarray,
    search_params: dict[str, Any],
    backend: str = "auto",
    device: str = "cpu",
    rerank: RerankStore | None = None,
) -> Searcher:
    """Pick a search backend.

    Args:
        index_loader: a callable returning the CPU FAISS index (read only when a FAISS backend is used).
        vectors: the (N, D) float32 vectors, row = image id.
        search_params: tuned query-time parameters from the manifest (nprobe, efSearch).
        backend: 'auto' (CPU FAISS on the CPU; faiss-gpu if installed, else torch, on CUDA), 'faiss',
            'faiss-gpu' or 'torch'.
        device: 'cpu', 'cuda' or 'cuda:N'.
        rerank: the store a compressed index's shortlist is re-scored from (FAISS backends; the
            torch backend is exact and needs none).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown search backend {backend!r}: use one of {', '.join(BACKENDS)}")
    on_gpu = str(device).startswith("cuda")
    if backend == "auto":
        backend = ("faiss-gpu" if faiss_has_gpu() else "torch") if on_gpu else "faiss"
    if backend == "torch":
        return TorchSearcher(vectors, device)
    index = index_loader()
    if backend == "faiss-gpu":
        index = index_to_gpu(index, device)
    return FaissSearcher(index, vectors, search_params, rerank)


def index_to_gpu(index: Any, device: str) -> Any:
    """Move a CPU FAISS index to a GPU (faiss-gpu builds only)."""
    if not faiss_has_gpu():
        raise ConfigError(
            "search backend 'faiss-gpu' needs the faiss-gpu package and a CUDA device; use 'torch'"
        )
    import faiss

    gpu_id = int(str(device).split(":")[1]) if ":" in str(device) else 0
    resources = faiss.StandardGpuResources()
    gpu_index = faiss.index_cpu_to_gpu(resources, gpu_id, index)
    gpu_index._resources = resources  # the index must not outlive its resources
    log.info("index moved to GPU %d with faiss-gpu", gpu_id)
    return gpu_index
