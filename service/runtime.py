"""What a running server holds: models, batchers, the served index, the decode pool, the memory budget.

One ``Runtime`` per app (per worker process). The lifespan creates it, ``start`` loads the models
(a bad checkpoint stops the server at once, with the reason) and opens the published index (a
missing one does not: the server answers 503 on /readyz and /query until one is published, which
the watcher notices). ``query`` is the whole pipeline of ``POST /query``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, BinaryIO

import numpy as np
import torch

from birdsearch import __version__
from birdsearch.model import audio
from birdsearch.model.device import resolve_device
from birdsearch.service import answer, recording
from birdsearch.service.batcher import MicroBatcher
from birdsearch.service.embedders import DistilledEmbedder, StudentEmbedder
from birdsearch.service.errors import BadParameterError, ModeUnavailableError, NotReadyError
from birdsearch.service.index_state import IndexHolder, ServedIndex, prepare
from birdsearch.service.load import RecentLoad
from birdsearch.service.metrics import BATCH_REQUESTS, BATCH_ROWS, observe_stage
from birdsearch.service.schemas import IndexInfo, ModelInfo, QueryFacts, QueryForm, QueryResponse
from birdsearch.service.settings import Settings
from birdsearch.service.thumbnails import ThumbnailCache

log = logging.getLogger(__name__)


@dataclass
class Models:
    """The loaded models; tests build one and share it between apps."""

    distilled: DistilledEmbedder | None = None
    student: StudentEmbedder | None = None

    @classmethod
    def load(cls, settings: Settings) -> Models:
        """Load what the settings ask for (raises CheckpointError/ModelUnavailableError with the fix)."""
        distilled = (
            DistilledEmbedder.load(settings.checkpoint, settings.device) if settings.checkpoint else None
        )
        student = (
            StudentEmbedder.load(settings.student, settings.device) if settings.cascade_enabled else None
        )
        if settings.compile:
            for embedder in (distilled, student):
                if embedder is not None:
                    embedder.compile()
                    warm_up(embedder)
        return cls(distilled, student)

    def by_mode(self) -> dict[str, Any]:
        return {m.mode: m for m in (self.distilled, self.student) if m is not None}


def pad_rows(rows: np.ndarray, length: int) -> np.ndarray:
    """Windows shorter than the model's, each repeat-padded to ``length`` samples, stacked."""
    return np.stack([audio.repeat_pad(row, length) for row in rows])


def warm_up(embedder: Any) -> None:
    """Run batches of 2 and 1 silent windows, so that compilation happens before /readyz says ready."""
    for size in (2, 1):
        embedder(np.zeros((size, embedder.front_end.window_samples), dtype=np.float32))


class Runtime:
    """Everything ``POST /query`` needs, started and stopped with the app."""

    def __init__(self, settings: Settings, models: Models | None = None):
        self.settings = settings
        self.models = models
        self.batchers: dict[str, MicroBatcher] = {}
        self.holder: IndexHolder | None = None
        self.budget = recording.MemoryBudget(settings.audio_memory_bytes, settings.max_decoded_bytes)
        self.limits = audio.AudioLimits(max_duration_s=settings.max_duration_s)
        self.decode_pool: ThreadPoolExecutor | None = None
        # Every torch (and FAISS) computation of this process runs on this one thread: loading,
        # batches of every model, search. libgomp counts the threads of all OpenMP teams, and once
        # they outnumber the cores it stops spinning between parallel regions; the audio tower's
        # hundreds of small regions then each wait for a sleeping thread to wake. One team keeps
        # the audio tower near its speed in a plain script (BENCHMARKS.md, service).
        self.compute: ThreadPoolExecutor | None = None
        self.load = RecentLoad()  # queries in flight, and how many lately worked off the compute thread
        self.thumbnails = ThumbnailCache(settings.thumbnail_cache_bytes)
        self.started_at = time.time()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.compute = ThreadPoolExecutor(1, thread_name_prefix="birdsearch-compute")
        if self.models is None:
            self.models = await self.on_compute(Models.load, self.settings)
        self.decode_pool = ThreadPoolExecutor(
            self.settings.decode_thread_count, thread_name_prefix="birdsearch-decode"
        )
        for mode, embedder in self.models.by_mode().items():
            self.batchers[mode] = MicroBatcher(
                partial(self.run_sized, embedder),
                max_batch=self.settings.batch_size,
                max_wait_s=self.settings.max_wait_ms / 1000,
                name=mode,
                observe=self._batch_observer(mode),
                allocate=embedder.staging,
                executor=self.compute,
            )
            self.batchers[mode].start()
        self.holder = IndexHolder(
            self.settings.index_root,
            partial(self.run_sized, self._open_version),
            partial(self.run_sized, self._prepare),
            self.settings.reload_interval_s,
            executor=self.compute,
        )
        await self.holder.refresh()
        self.holder.start()

    async def stop(self) -> None:
        if self.holder is not None:
            await self.holder.stop()
        for batcher in self.batchers.values():
            await batcher.stop()
        if self.decode_pool is not None:
            self.decode_pool.shutdown(wait=False)
        if self.compute is not None:
            self.compute.shutdown(wait=False)

    async def on_compute(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` on the compute thread, awaited without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.compute, self.run_sized, fn, *args)

    def compute_thread_count(self) -> int:
        """Torch threads for the next model call: the setting, else the worker's cores less those
        that queries working elsewhere (decoding, answering) kept busy over the last seconds.

        Under load the decode threads keep cores busy; a torch thread sharing a core with them makes
        each of the model's many parallel regions wait for it (or spin against it), which cost the
        toy server a quarter of its CPU per query. Alone, a call gets every core: one clip's latency.
        """
        if self.settings.compute_threads:
            return self.settings.compute_threads
        elsewhere = max(0, round(self.load.average_elsewhere()))  # a read racing an update may dip below 0
        busy = min(elsewhere, self.settings.decode_thread_count + 1)
        return max(1, self.settings.cores_per_worker - busy)

    def run_sized(self, fn: Any, *args: Any) -> Any:
        """On the compute thread: set torch's thread count for this call, then ``fn(*args)``."""
        threads = self.compute_thread_count()
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return fn(*args)

    def _batch_observer(self, mode: str) -> Any:
        def observe(rows: int, requests: int, seconds: float) -> None:
            BATCH_ROWS.labels(mode).observe(rows)
            BATCH_REQUESTS.labels(mode).observe(requests)

        return observe

    def _open_version(self, name: str) -> Any:
        from birdsearch.indexer.store import IndexRoot

        device = "cuda" if resolve_device(self.settings.device).type == "cuda" else "cpu"
        return IndexRoot(self.settings.index_root).open(name, device=device)

    def _prepare(self, version: Any) -> ServedIndex:
        assert self.models is not None
        return prepare(version, self.models.distilled, self.models.student)

    # -- state ---------------------------------------------------------------------------------

    @property
    def modes(self) -> list[str]:
        return list(self.batchers)

    def served(self) -> ServedIndex:
        """The index version to answer with, or NotReadyError saying why there is none."""
        current = self.holder.current if self.holder is not None else None
        if current is None:
            reason = self.holder.last_error if self.holder is not None else None
            raise NotReadyError(reason or "the server is still starting")
        return current

    def readiness(self) -> tuple[bool, str | None]:
        """(ready, detail); ready with a detail when a newer index version was refused."""
        try:
            self.served()
        except NotReadyError as e:
            return False, str(e)
        return True, self.holder.last_error if self.holder is not None else None

    def resolve_mode(self, mode: str) -> str:
        """'auto' to the configured default; a mode without a loaded model is a 422 saying how to get it."""
        chosen = self.settings.default_mode if mode == "auto" else mode
        if chosen not in self.batchers:
            fix = (
                "set BIRDSEARCH_CHECKPOINT to a distilled encoder directory"
                if chosen == "distilled"
                else "set BIRDSEARCH_CASCADE=always (and BIRDSEARCH_STUDENT)"
            )
            raise ModeUnavailableError(f"mode {chosen!r} is not available on this server: {fix}")
        return chosen

    def versions(self) -> dict[str, Any]:
        assert self.models is not None
        current = self.holder.current if self.holder is not None else None
        return {
            "birdsearch": __version__,
            "api": 1,
            "default_mode": self.settings.default_mode,
            "models": {mode: vars(m.facts) for mode, m in self.models.by_mode().items()},
            "index": IndexInfo(**current.describe()) if current else None,
        }

    # -- the query pipeline --------------------------------------------------------------------

    def check_form(self, form: QueryForm, model_window_s: float) -> tuple[float, float]:
        """Limits that depend on settings and the model; returns (window_s, hop_s)."""
        s = self.settings
        if form.k > s.max_k:
            raise BadParameterError(f"k={form.k} is above the limit of {s.max_k} (BIRDSEARCH_MAX_K)")
        if form.species_k > s.max_species_k:
            raise BadParameterError(
                f"species_k={form.species_k} is above the limit of {s.max_species_k} (BIRDSEARCH_MAX_SPECIES_K)"
            )
        window_s = form.window_s or model_window_s
        if not 1.0 <= window_s <= model_window_s:
            raise BadParameterError(
                f"window_s={window_s:g} must be between 1 and the model's window of {model_window_s:g} s"
            )
        hop_s = form.hop_s or window_s
        if hop_s < s.min_hop_s:
            raise BadParameterError(
                f"hop_s={hop_s:g} is below the minimum of {s.min_hop_s:g} s (BIRDSEARCH_MIN_HOP_S)"
            )
        return window_s, hop_s

    async def query(self, upload: BinaryIO, form: QueryForm) -> QueryResponse:
        """Decode, window, embed (micro-batched), search and rank one uploaded recording."""
        self.load.change(active=+1)
        try:
            return await self._answer(upload, form)
        finally:
            self.load.change(active=-1)

    @contextmanager
    def waiting_on_compute(self) -> Iterator[None]:
        """Count the query among those whose work is queued or running on the compute thread."""
        self.load.change(computing=+1)
        try:
            yield
        finally:
            self.load.change(computing=-1)

    async def _answer(self, upload: BinaryIO, form: QueryForm) -> QueryResponse:
        started = time.perf_counter()
        served = self.served()
        mode = self.resolve_mode(form.mode)
        embedder = self.models.by_mode()[mode]  # type: ignore[union-attr]
        front_end = embedder.front_end
        window_s, hop_s = self.check_form(form, front_end.window_s)
        allowed = await asyncio.to_thread(answer.filter_ids, served, form)
        loop = asyncio.get_running_loop()

        header = await loop.run_in_executor(self.decode_pool, recording.read_header, upload)
        estimate = header.decode_bytes(front_end.sample_rate) if header else recording.UNKNOWN_SIZE_ESTIMATE
        async with self.budget.hold(estimate):
            t0 = time.perf_counter()
            rec = await loop.run_in_executor(
                self.decode_pool, recording.decode, upload, front_end.sample_rate, self.limits
            )
            t1 = time.perf_counter()
            observe_stage("decode", t1 - t0)
            plan = recording.plan_windows(
                rec.samples,
                rec.sample_rate,
                window_s,
                hop_s,
                self.settings.max_windows,
                front_end.window_samples,
            )
            with self.waiting_on_compute():
                vectors = await self.embed(mode, plan, front_end.window_samples)
            t2 = time.perf_counter()
        if mode == "cascade" and served.cascade is None:
            raise NotReadyError(f"index {served.name} has no species for the cascade to classify against")
        with self.waiting_on_compute():
            if mode == "cascade":
                vectors = await self.on_compute(served.cascade, vectors)
            species, images, timeline, aggregation = await self.on_compute(
                answer.search_and_rank,
                served,
                vectors,
                plan,
                form,
                allowed,
                self.settings.candidates_per_window,
            )
        t3 = time.perf_counter()
        facts = QueryFacts(
            duration_s=round(rec.duration_s, 3),
            sample_rate=rec.sample_rate,
            source_sample_rate=rec.source_rate,
            source_channels=rec.source_channels,
            source_format=rec.source_format,
            windows=plan.count,
            window_s=window_s,
            hop_s=hop_s,
            padded=plan.padded,
            filtered_images=int(len(allowed)) if allowed is not None else None,
            model=ModelInfo(mode=mode, id=embedder.facts.id, dim=embedder.facts.dim),  # type: ignore[arg-type]
            index=IndexInfo(**served.describe()),
            timings_ms={
                "decode": round(1000 * (t1 - t0), 2),
                "embed": round(1000 * (t2 - t1), 2),
                "search": round(1000 * (t3 - t2), 2),
                "total": round(1000 * (t3 - started), 2),
            },
        )
        return QueryResponse(
            species=species, images=images, timeline=timeline, aggregation=aggregation, query=facts
        )

    async def embed(self, mode: str, plan: recording.WindowPlan, model_window: int) -> np.ndarray:
        """All windows of a plan through the mode's batcher; (N, dim) in window order."""
        batcher = self.batchers[mode]
        if plan.parts[0].shape[1] == model_window:  # views: the batcher copies one batch at a time
            outputs = await asyncio.gather(*(batcher.submit(part) for part in plan.parts))
            return np.concatenate(outputs)
        outputs = []  # shorter windows are padded to the model's length one batch's worth at a time
        for part in plan.parts:
            for start in range(0, len(part), batcher.max_batch):
                rows = part[start : start + batcher.max_batch]
                chunk = await asyncio.to_thread(pad_rows, rows, model_window)  # a copy: off the event loop
                outputs.append(await batcher.submit(chunk))
        return np.concatenate(outputs)
