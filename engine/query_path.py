"""The pipeline of ``POST /query``: check the question, decode, window, embed (micro-batched), search, answer.

Decoding runs on the decode pool under the memory budget; embedding goes through the mode's
micro-batcher; the cascade's species step and the search run on the compute thread. Each stage's
time goes into the answer's ``timings_ms`` and the stage metrics.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from birdsearch.engine import answer, recording
from birdsearch.engine.confidence import apply_min_conf, calibration_for, no_calibration
from birdsearch.engine.config import CLASSIFYING_MODES, MODES, EngineConfig
from birdsearch.engine.cpu_share import ComputeThread
from birdsearch.engine.embedders import split_outputs
from birdsearch.engine.errors import BadParameterError, ModeUnavailableError, NotReadyError
from birdsearch.engine.index_state import ServedIndex
from birdsearch.engine.lifecycle import Lifecycle
from birdsearch.engine.metrics import observe_stage
from birdsearch.engine.schemas import IndexInfo, ModelInfo, QueryFacts, QueryResponse, Question
from birdsearch.engine.species_filter import SpeciesFilter, combine
from birdsearch.errors import ConfigError
from birdsearch.model import audio


def prepare_rows(
    rows: np.ndarray, length: int, band: tuple[float, float | None], sample_rate: int
) -> np.ndarray:
    """Windows as the model takes them (a copy): each repeat-padded to ``length`` samples, then band-passed."""
    padded = np.stack([row if len(row) == length else audio.repeat_pad(row, length) for row in rows])
    return audio.band_pass(padded, sample_rate, *band)


def check_question(config: EngineConfig, question: Question, model_window_s: float, sample_rate: int = 48_000
                   ) -> tuple[float, float]:  # fmt: skip
    """Limits that depend on the config and the model; returns (window_s, hop_s)."""
    s = config
    if question.k > s.max_k:
        raise BadParameterError(f"k={question.k} is above the limit of {s.max_k} (BIRDSEARCH_MAX_K)")
    if question.species_k > s.max_species_k:
        raise BadParameterError(
            f"species_k={question.species_k} is above the limit of {s.max_species_k} (BIRDSEARCH_MAX_SPECIES_K)"
        )
    window_s = question.window_s or model_window_s
    if not 1.0 <= window_s <= model_window_s:
        raise BadParameterError(
            f"window_s={window_s:g} must be between 1 and the model's window of {model_window_s:g} s"
        )
    hop_s = question.hop_s or window_s
    if hop_s < s.min_hop_s:
        raise BadParameterError(
            f"hop_s={hop_s:g} is below the minimum of {s.min_hop_s:g} s (BIRDSEARCH_MIN_HOP_S)"
        )
    try:
        audio.band_pass(np.zeros(8, np.float32), sample_rate, question.fmin_hz, question.fmax_hz)
    except ConfigError as e:
        raise BadParameterError(f"fmin_hz/fmax_hz: {e}") from e
    return window_s, hop_s


class Stopwatch:
    """The stage times of one query, in milliseconds, for its answer's ``timings_ms``."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.ms: dict[str, float] = {}

    def skip(self) -> None:
        """Start the next stage now (the time since the last lap counts only in the total)."""
        self.last = time.perf_counter()

    def lap(self, stage: str) -> float:
        """End ``stage`` now; returns its seconds."""
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        self.ms[stage] = round(1000 * seconds, 2)
        return seconds

    def timings(self) -> dict[str, float]:
        return {**self.ms, "total": round(1000 * (time.perf_counter() - self.started), 2)}


@dataclass
class Request:
    """One query on its way through the pipeline: what it asked for and what it has so far."""

    question: Question
    served: ServedIndex  # the index version it began with (a hot reload does not change it)
    mode: str
    embedder: Any  # the mode's DistilledEmbedder or StudentEmbedder
    window_s: float
    hop_s: float
    allowed: np.ndarray | None  # image ids the taxon filters allow; None: all
    watch: Stopwatch


class QueryPath:
    """Answers ``POST /query`` with the lifecycle's models and index, on its pools and compute thread."""

    def __init__(self, config: EngineConfig, loaded: Lifecycle, compute: ComputeThread):
        self.config = config
        self.loaded = loaded
        self.compute = compute
        self.budget = recording.MemoryBudget(config.audio_memory_bytes, config.max_decoded_bytes)
        self.limits = audio.AudioLimits(max_duration_s=config.max_duration_s)
        # Each mode's calibration of window species scores (None: raw scores only; min_conf refused).
        self.calibrations = {
            mode: calibration_for(mode, config.calibration, config.checkpoint, config.index_root)
            for mode in MODES
        }
        self.species_filter = SpeciesFilter(config.species_list)

    def resolve_mode(self, mode: str) -> str:
        """'auto' to the configured default; a mode without a loaded model is a 422 saying how to get it."""
        chosen = self.config.default_mode if mode == "auto" else mode
        if chosen not in self.loaded.batchers:
            raise ModeUnavailableError(
                f"mode {chosen!r} is not available on this server: {how_to_load(chosen)}"
            )
        return chosen

    async def query(self, upload: BinaryIO, question: Question) -> QueryResponse:
        """Decode, window, embed (micro-batched), search and rank one uploaded recording."""
        with self.compute.in_flight():
            request = await self._begin(question)
            async with self.budget.hold(await self._estimate(upload, request)):
                rec, plan, vectors = await self._decode_and_embed(upload, request)
            ranked = await self._search(request, vectors, plan)
            facts = query_facts(request, rec, plan)
        species, images, timeline, aggregation = ranked
        min_conf = self.min_conf(request)
        species, images, timeline, reason, message = apply_min_conf(
            species, images, timeline, min_conf, question.include_abstained
        )
        return QueryResponse(
            species=species, images=images, timeline=timeline, aggregation=aggregation, query=facts,
            min_conf=min_conf, abstained=reason is not None, reason=reason, message=message,
        )  # fmt: skip

    def min_conf(self, request: Request) -> float | None:
        """The question's threshold, else the one chosen with the mode's gate on validation, else none."""
        if request.question.min_conf is not None:
            return request.question.min_conf
        gate = self.loaded.gates.get(request.mode)
        return gate.min_conf if gate is not None and self.calibrations.get(request.mode) is not None else None

    async def _begin(self, question: Question) -> Request:
        """Checks that need no audio: a served index, a loaded mode, the question's limits and filters."""
        watch = Stopwatch()
        served = self.loaded.served()
        mode = self.resolve_mode(question.mode)
        embedder = self.loaded.models.by_mode()[mode]  # type: ignore[union-attr]
        window_s, hop_s = check_question(self.config, question, embedder.front_end.window_s,
                                         embedder.front_end.sample_rate)  # fmt: skip
        if question.min_conf is not None and self.calibrations.get(mode) is None:
            raise BadParameterError(no_calibration(mode))
        allowed = await asyncio.to_thread(self.allowed_ids, served, question)
        return Request(question, served, mode, embedder, window_s, hop_s, allowed, watch)

    def allowed_ids(self, served: ServedIndex, question: Question) -> np.ndarray | None:
        """Image ids the taxon filters and the species list allow (None: all); on a worker thread."""
        by_list = self.species_filter.allowed(served, question.species_list)
        return combine(answer.filter_ids(served, question), by_list, served.name)

    async def _estimate(self, upload: BinaryIO, request: Request) -> int:
        """Bytes the decoded upload will take, from its header, to hold in the memory budget."""
        rate = request.embedder.front_end.sample_rate
        loop = asyncio.get_running_loop()
        header = await loop.run_in_executor(self.loaded.decode_pool, recording.read_header, upload)
        return header.decode_bytes(rate) if header else recording.UNKNOWN_SIZE_ESTIMATE

    async def _decode_and_embed(
        self, upload: BinaryIO, request: Request
    ) -> tuple[audio.Recording, recording.WindowPlan, np.ndarray]:
        """The upload decoded, cut into windows and embedded: (recording, plan, (W, dim + tower) model outputs)."""
        front_end = request.embedder.front_end
        request.watch.skip()  # the header and the wait for the budget are not decoding
        rec = await asyncio.get_running_loop().run_in_executor(
            self.loaded.decode_pool, recording.decode, upload, front_end.sample_rate, self.limits
        )
        observe_stage("decode", request.watch.lap("decode"))
        plan = recording.plan_windows(
            rec.samples, rec.sample_rate, request.window_s, request.hop_s,
            self.config.max_windows, front_end.window_samples,
        )  # fmt: skip
        with self.compute.waiting():
            band = (request.question.fmin_hz, request.question.fmax_hz)
            vectors = await self.embed(
                request.mode, plan, front_end.window_samples, band, front_end.sample_rate
            )
        request.watch.lap("embed")
        return rec, plan, vectors

    async def _search(self, request: Request, vectors: np.ndarray, plan: recording.WindowPlan) -> Any:
        """The mode's species step (the modes that classify), then search and rank on the compute thread."""
        served = request.served
        head = served.heads.get(request.mode)
        if request.mode in CLASSIFYING_MODES and head is None:
            raise NotReadyError(
                f"index {served.name} has no species for mode {request.mode!r} to classify against"
            )
        features = split_outputs(vectors, request.embedder.facts.dim)  # (embeddings, tower features)
        vectors = features[0]
        with self.compute.waiting():
            if head is not None:
                vectors = await self.compute.run(head, vectors)
            ranked = await self.compute.run(
                answer.search_and_rank, served, vectors, plan, request.question, request.allowed,
                self.config.candidates_per_window, self.config.species_rule, self.calibrations.get(request.mode),
                self.loaded.gates.get(request.mode), features,
            )  # fmt: skip
        request.watch.lap("search")
        return ranked

    async def embed(self, mode: str, plan: recording.WindowPlan, model_window: int,
                    band: tuple[float, float | None] = (0.0, None), sample_rate: int = 48_000) -> np.ndarray:  # fmt: skip
        """All windows of a plan through the mode's batcher; (N, dim) in window order."""
        batcher = self.loaded.batchers[mode]
        as_they_are = band == (0.0, None) and all(part.shape[1] == model_window for part in plan.parts)
        if as_they_are:  # views: the batcher copies one batch at a time
            outputs = await asyncio.gather(*(batcher.submit(part) for part in plan.parts))
            return np.concatenate(outputs)
        outputs = []  # shorter windows padded to the model's length, band-passed, one batch's worth at a time
        for part in plan.parts:
            for start in range(0, len(part), batcher.max_batch):
                rows = part[start : start + batcher.max_batch]
                chunk = await asyncio.to_thread(
                    prepare_rows, rows, model_window, band, sample_rate
                )  # off the loop
                outputs.append(await batcher.submit(chunk))
        return np.concatenate(outputs)


def query_facts(request: Request, rec: audio.Recording, plan: recording.WindowPlan) -> QueryFacts:
    """What the answer says about the query itself: the audio, the windows, the model, the index, times."""
    facts = request.embedder.facts
    return QueryFacts(
        duration_s=round(rec.duration_s, 3),
        sample_rate=rec.sample_rate,
        source_sample_rate=rec.source_rate,
        source_channels=rec.source_channels,
        source_format=rec.source_format,
        windows=plan.count,
        window_s=request.window_s,
        hop_s=request.hop_s,
        padded=plan.padded,
        filtered_images=int(len(request.allowed)) if request.allowed is not None else None,
        model=ModelInfo(mode=request.mode, id=facts.id, dim=facts.dim),  # type: ignore[arg-type]
        index=IndexInfo(**request.served.describe()),
        timings_ms=request.watch.timings(),
    )


def how_to_load(mode: str) -> str:
    """What a server needs for ``mode``."""
    if mode == "distilled":
        return "set BIRDSEARCH_CHECKPOINT to a distilled encoder directory"
    if mode == "cascade":
        return "set BIRDSEARCH_CASCADE=always (and BIRDSEARCH_STUDENT)"
    return ("set BIRDSEARCH_CHECKPOINT to an encoder distilled with its species classifier (this version of "
            "'birdsearch distill') and BIRDSEARCH_STUDENT to its student")  # fmt: skip
