"""Recordings in bulk, in this process: each recording's detections, the models and the index loaded once.

reader → mapper → detector, for ``analyze`` (which writes the results) and the Python API's
``analyze`` (which yields them):

- **reader**: decoding threads (libsndfile, soxr and FFmpeg release the GIL) turn each recording
  into windows (``audio.load`` and ``recording.plan_windows``, as a query's are cut), a bounded
  number of recordings ahead of the model;
- **mapper**: ``SharedBatches`` runs the windows of many recordings through shared forward passes
  of the mode's embedder (distilled encoder, or the cascade's student and species head);
- **detector**: each recording's windows are searched in the index like a query's; every species
  whose window confidence reaches ``min_conf`` (at most ``species_k`` a window) is a detection, with
  the best photo of that species for that window (``Detector.detect``).

A recording that fails (unreadable, silent, too long) comes out with its error and the run goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from birdsearch.cpus import available_cpus
from birdsearch.engine.config import EngineConfig
from birdsearch.engine.detections import RecordingResult, confident
from birdsearch.engine.detector import Detector
from birdsearch.engine.inputs import Recording
from birdsearch.engine.ranking import DEFAULT_SPECIES_RULE, parse_rule
from birdsearch.engine.shared_batches import SharedBatches
from birdsearch.errors import BirdsearchError, ConfigError

log = logging.getLogger(__name__)

GPU_BATCH, CPU_BATCH = 64, 8  # windows per forward pass when none is given


@dataclass(frozen=True, kw_only=True)
class BatchOptions:
    """What a batch of recordings is asked: the mode, the windows, the detections kept, the batching."""

    mode: str = "auto"  # "distilled", "cascade" or "auto" (distilled when a checkpoint is given)
    # detections need a calibrated confidence at least this (the raw score without a calibration)
    min_conf: float = 0.1
    species_k: int = 5  # at most this many species per window
    window_s: float | None = None  # default: the model's window
    hop_s: float | None = None  # default: the window (no overlap)
    species_list: Path | None = None  # only these species (scientific names or BirdNET lines)
    strict_species_list: bool = (
        False  # refuse a species list naming species the index lacks (default: skip them)
    )
    candidates_per_window: int = EngineConfig.candidates_per_window  # photos searched per window
    species_rule: str = DEFAULT_SPECIES_RULE  # how a species' photos pool into its window score
    batch_size: int = 0  # windows per forward pass; 0: 64 on a GPU, 8 on a CPU
    workers: int = 0  # decoding threads; 0: the cores this process may use
    max_duration_s: float = 3600.0  # longer recordings fail (decoded audio is in memory)

    def __post_init__(self) -> None:
        if self.species_k < 1:
            raise ConfigError(f"species_k={self.species_k} must be at least 1")
        if self.mode not in ("auto", "distilled", "cascade"):
            raise ConfigError(f"mode {self.mode!r}: use auto, distilled or cascade")
        if self.batch_size < 0 or self.workers < 0:
            raise ConfigError("batch_size and workers must be 0 (automatic) or positive")
        if self.max_duration_s <= 0:
            raise ConfigError(f"max_duration_s={self.max_duration_s:g} must be positive")
        parse_rule(self.species_rule)  # ConfigError listing the rules


def resolve_window(options: BatchOptions, model_window_s: float) -> tuple[float, float]:
    """(window_s, hop_s) of ``options``, checked against the model's window and the engine's smallest hop."""
    window_s = options.window_s or model_window_s
    if not 1.0 <= window_s <= model_window_s:
        raise ConfigError(
            f"window_s={window_s:g} must be between 1 and the model's window of {model_window_s:g} s"
        )
    hop_s = options.hop_s or window_s
    min_hop_s = EngineConfig.min_hop_s  # the service's floor, for the same reason
    if hop_s < min_hop_s:
        raise ConfigError(
            f"hop_s={hop_s:g} is below the minimum of {min_hop_s:g} s: each window costs a forward pass"
        )
    return window_s, hop_s


def default_batch(device: str) -> int:
    from birdsearch.model.device import resolve_device

    return GPU_BATCH if resolve_device(device).type == "cuda" else CPU_BATCH


@dataclass(frozen=True)
class Decoded:
    """A recording decoded and cut into windows by a reader thread."""

    recording: Recording
    parts: list[np.ndarray]  # (n_i, W) windows
    starts_s: np.ndarray
    duration_s: float
    source_rate: int


def read_windows(recording: Recording, sample_rate: int, window_s: float, hop_s: float,
                 model_window: int, limits: Any) -> Decoded:  # fmt: skip
    """Decode one recording and cut it as the query service does (runs on a reader thread)."""
    from birdsearch.engine.recording import plan_windows
    from birdsearch.model import audio

    rec = audio.load(recording.path, sample_rate=sample_rate, limits=limits)
    max_windows = len(audio.window_starts(len(rec.samples), round(window_s * sample_rate),
                                          max(1, round(hop_s * sample_rate))))  # fmt: skip
    plan = plan_windows(rec.samples, rec.sample_rate, window_s, hop_s, max_windows, model_window)
    return Decoded(recording, list(plan.parts), plan.starts_s, rec.duration_s, rec.source_rate)


def recording_result(detector: Detector, options: BatchOptions, path: Path | str, model_out: np.ndarray,
                     starts_s: np.ndarray, window_s: float, duration_s: float, source_rate: int) -> RecordingResult:  # fmt: skip
    """One recording's result from its windows' model outputs: the detections that reach ``min_conf``."""
    windows = detector.detect(
        detector.vectors(model_out), starts_s, window_s, duration_s, species_k=options.species_k,
        min_conf=options.min_conf, candidates_per_window=options.candidates_per_window,
        species_rule=options.species_rule,
    )  # fmt: skip
    fe = detector.front_end
    return RecordingResult(str(path), round(duration_s, 3), source_rate, confident(windows, options.min_conf),
                           float(fe.f_min), float(fe.f_max))  # fmt: skip


class BatchRun:
    """reader → mapper → detector without files: recordings in, each one's result (or error) out."""

    def __init__(self, detector: Detector, options: BatchOptions, device: str = "auto"):
        """
        Args:
            detector: the loaded model and index.
            options: what to ask of every recording.
            device: where the model runs ("auto", "cpu", "cuda"): sets the default batch size.
        """
        from birdsearch.model import audio

        self.detector = detector
        self.options = options
        self.window_s, self.hop_s = resolve_window(options, detector.front_end.window_s)
        self.limits = audio.AudioLimits(max_duration_s=options.max_duration_s)
        self.batch_size = options.batch_size or default_batch(device)
        self.workers = options.workers or available_cpus()
        self.batches = SharedBatches(self.embed, self.batch_size, detector.front_end.window_samples)
        # Seconds per stage; "decode" is summed over the reader threads, "waiting" is the model's
        # thread waiting for them (decoding is the bottleneck when it grows).
        self.seconds = {"decode": 0.0, "waiting": 0.0, "model": 0.0, "search": 0.0}
        self.lock = threading.Lock()

    def facts(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "workers": self.workers, "forward_passes": self.batches.calls}

    def read(self, recording: Recording) -> Decoded:
        fe = self.detector.front_end
        started = time.perf_counter()
        try:
            return read_windows(
                recording, fe.sample_rate, self.window_s, self.hop_s, fe.window_samples, self.limits
            )
        finally:
            with self.lock:  # several reader threads add here
                self.seconds["decode"] += time.perf_counter() - started

    def embed(self, windows: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        vectors = self.detector.embedder(windows)
        self.seconds["model"] += time.perf_counter() - started
        return vectors

    def run(self, todo: Sequence[Recording]) -> Iterator[tuple[Recording, RecordingResult | BaseException]]:
        """Each recording with its result or its error, as they are done (windows share forward passes,
        so a short recording may finish before a long one read earlier)."""
        decoded: dict[str, Decoded] = {}
        with ThreadPoolExecutor(self.workers, thread_name_prefix="birdsearch-analyze-read") as pool:
            waited = time.perf_counter()
            for recording, outcome in read_ahead(pool, self.read, todo, ahead=self.workers + 1):
                self.seconds["waiting"] += time.perf_counter() - waited
                if isinstance(outcome, BaseException):
                    yield recording, outcome
                    continue
                decoded[recording.name] = outcome
                for name, model_out in self.batches.add(recording.name, outcome.parts):
                    yield self.finish(decoded.pop(name), model_out)
                waited = time.perf_counter()
            for name, model_out in self.batches.flush():
                yield self.finish(decoded.pop(name), model_out)

    def finish(self, item: Decoded, model_out: np.ndarray) -> tuple[Recording, RecordingResult]:
        started = time.perf_counter()
        result = recording_result(self.detector, self.options, item.recording.path, model_out, item.starts_s,
                                  self.window_s, item.duration_s, item.source_rate)  # fmt: skip
        self.seconds["search"] += time.perf_counter() - started
        return item.recording, result


def read_ahead(pool: ThreadPoolExecutor, read: Any, todo: Sequence[Recording], ahead: int
               ) -> Iterator[tuple[Recording, Any]]:  # fmt: skip
    """Each recording with ``read(recording)`` or its error, in order, at most ``ahead`` reading at once.

    The bound keeps memory at a few recordings' audio, however many files a folder holds.
    """
    queue: deque[tuple[Recording, Future]] = deque()
    items = iter(todo)
    for recording in items:
        queue.append((recording, pool.submit(read, recording)))
        if len(queue) >= ahead:
            break
    while queue:
        recording, future = queue.popleft()
        nxt = next(items, None)
        if nxt is not None:
            queue.append((nxt, pool.submit(read, nxt)))
        try:
            yield recording, future.result()
        except BirdsearchError as e:
            yield recording, e
        except Exception as e:  # a decoder's surprise fails this recording, not the run
            log.exception("reading %s failed unexpectedly", recording.path)
            yield recording, e
