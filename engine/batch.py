"""Recordings in bulk, in this process: each recording's detections, the models and the index loaded once.

reader → mapper → detector, for ``analyze`` (which writes the results) and the Python API's
``analyze`` (which yields them):

- **reader**: decoding threads (libsndfile, soxr and FFmpeg release the GIL) turn each recording
  into windows block by block (``read_windows``: ``audio.AudioStream`` and ``audio.stream_windows``,
  the windows a query's are, by ``audio.window_starts``), a few recordings ahead of the model and a
  few parts of each, so that memory is bounded however long a recording is;
- **mapper**: ``SharedBatches`` runs the windows of many recordings through shared forward passes
  of the mode's embedder (distilled encoder, or the cascade's student and species head);
- **detector**: each recording's windows are searched in the index like a query's; every species
  whose window confidence reaches ``min_conf`` (at most ``species_k`` a window) is a detection, with
  the best photo of that species for that window (``Detector.detect``).

A recording that fails (unreadable, silent, longer than ``max_duration_s``, a safety limit) comes out
with its error and the run goes on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from birdsearch.cpus import available_cpus
from birdsearch.engine.config import MODES, EngineConfig
from birdsearch.engine.detections import RecordingResult, confident
from birdsearch.engine.detector import Detector
from birdsearch.engine.inputs import Recording
from birdsearch.engine.ranking import DEFAULT_SPECIES_RULE, parse_rule
from birdsearch.engine.shared_batches import SharedBatches
from birdsearch.errors import BirdsearchError, ConfigError
from birdsearch.model import audio

log = logging.getLogger(__name__)

GPU_BATCH, CPU_BATCH = 64, 8  # windows per forward pass when none is given
# A recording's first windows wait for its end up to this many (160 s of 10 s windows), so that a short
# recording found silent or cut off at its end costs no forward pass; a longer one streams past it.
HELD_WINDOWS = 16
DEFAULT_MIN_CONF = 0.1  # a mode without a gate (as BirdNET's default)


@dataclass(frozen=True, kw_only=True)
class BatchOptions:
    """What a batch of recordings is asked: the mode, the windows, the detections kept, the batching."""

    mode: str = "auto"  # one of MODES, or "auto" (the checkpoint's recorded default, else the cascade)
    # detections need a calibrated confidence at least this (the raw score without a calibration);
    # None: the threshold chosen with the mode's open-set gate on validation, else DEFAULT_MIN_CONF
    min_conf: float | None = None
    species_k: int = 5  # at most this many species per window
    window_s: float | None = None  # default: the model's window
    hop_s: float | None = None  # default: the window (no overlap)
    overlap_s: float | None = None  # BirdNET's way to give the hop: window minus overlap (not with hop_s)
    species_list: Path | None = None  # only these species (scientific names or BirdNET lines)
    strict_species_list: bool = (
        False  # refuse a species list naming species the index lacks (default: skip them)
    )
    candidates_per_window: int = EngineConfig.candidates_per_window  # photos searched per window
    species_rule: str = DEFAULT_SPECIES_RULE  # how a species' photos pool into its window score
    batch_size: int = 0  # windows per forward pass; 0: 64 on a GPU, 8 on a CPU
    workers: int = 0  # decoding threads; 0: the cores this process may use
    # a safety limit, not a memory one: recordings are read block by block (48 h: recorders write up to 24 h)
    max_duration_s: float = 48 * 3600.0
    fmin_hz: float = 0.0  # band-pass before the model (BirdNET's --fmin); 0: no high-pass
    fmax_hz: float | None = None  # (BirdNET's --fmax); None: no low-pass

    def __post_init__(self) -> None:
        if self.species_k < 1:
            raise ConfigError(f"species_k={self.species_k} must be at least 1")
        if self.mode not in ("auto", *MODES):
            raise ConfigError(f"mode {self.mode!r}: use auto, {', '.join(MODES)}")
        if self.batch_size < 0 or self.workers < 0:
            raise ConfigError("batch_size and workers must be 0 (automatic) or positive")
        if self.max_duration_s <= 0:
            raise ConfigError(f"max_duration_s={self.max_duration_s:g} must be positive")
        if self.fmin_hz < 0 or (self.fmax_hz is not None and self.fmax_hz <= self.fmin_hz):
            top = "" if self.fmax_hz is None else f"{self.fmax_hz:g}"
            raise ConfigError(f"band-pass {self.fmin_hz:g}–{top} Hz: need 0 <= fmin < fmax (Hz)")
        if self.overlap_s is not None and (self.hop_s is not None or self.overlap_s < 0):
            raise ConfigError(
                f"overlap_s={self.overlap_s:g}: give a hop or an overlap (at least 0), not both"
            )
        parse_rule(self.species_rule)  # ConfigError listing the rules


def resolve_window(options: BatchOptions, model_window_s: float) -> tuple[float, float]:
    """(window_s, hop_s) of ``options``, checked against the model's window and the engine's smallest hop."""
    window_s = options.window_s or model_window_s
    if not 1.0 <= window_s <= model_window_s:
        raise ConfigError(
            f"window_s={window_s:g} must be between 1 and the model's window of {model_window_s:g} s"
        )
    hop_s = options.hop_s or (window_s - options.overlap_s if options.overlap_s is not None else window_s)
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
class Heard:
    """What the end of a recording tells, after its last window: its length and its rate before resampling."""

    duration_s: float
    source_rate: int


def read_windows(path: Path | str, sample_rate: int, window_s: float, hop_s: float, model_window: int,
                 limits: Any, band: tuple[float, float | None] = (0.0, None), per_part: int = 64,
                 ) -> Iterator[audio.WindowPart | Heard]:  # fmt: skip
    """A recording's windows, ``per_part`` at a time as it is decoded, then what it was (``Heard``).

    Decoded block by block (``audio.AudioStream``) and cut as a query's windows are cut
    (``audio.window_starts``), each window repeat-padded to the model's and band-passed to ``band``
    (``fmin_hz``, ``fmax_hz``: ``audio.band_pass``), so that memory holds a part, whatever the
    recording's length. A recording found bad (damaged, silent) raises when that is known.
    """
    with audio.AudioStream(path, sample_rate, limits) as stream:
        for part in audio.stream_windows(stream, sample_rate, window_s, hop_s, model_window, per_part):
            yield audio.WindowPart(audio.band_pass(part.samples, sample_rate, *band), part.starts_s)
        yield Heard(stream.duration_s, stream.source_rate)


def read_all(path: Path | str, sample_rate: int, window_s: float, hop_s: float, model_window: int, limits: Any,
             band: tuple[float, float | None] = (0.0, None)) -> tuple[np.ndarray, np.ndarray, Heard]:  # fmt: skip
    """All of a recording's windows at once (``read_windows`` gathered): (N, W) windows, (N,) starts, ``Heard``."""
    parts, heard = [], None
    for item in read_windows(path, sample_rate, window_s, hop_s, model_window, limits, band):
        if isinstance(item, Heard):
            heard = item
        else:
            parts.append(item)
    assert heard is not None  # read_windows always ends with it
    return np.concatenate([p.samples for p in parts]), np.concatenate([p.starts_s for p in parts]), heard


def min_conf_of(options: BatchOptions, detector: Detector) -> float:
    """The threshold a batch applies: the options', else the one chosen with the mode's gate, else the default."""
    if options.min_conf is not None:
        return options.min_conf
    chosen = detector.default_min_conf if detector.calibration is not None else None
    return chosen if chosen is not None else DEFAULT_MIN_CONF


def recording_result(detector: Detector, options: BatchOptions, path: Path | str, model_out: np.ndarray,
                     starts_s: np.ndarray, window_s: float, duration_s: float, source_rate: int,
                     band: tuple[float, float | None] = (0.0, None)) -> RecordingResult:  # fmt: skip
    """One recording's result from its windows' model outputs: the detections that reach ``min_conf``,
    none in a window the mode's gate calls novel.

    Its frequency box is the band the model heard: the front end's, narrowed by the band-pass.
    """
    min_conf = min_conf_of(options, detector)
    windows = detector.detect(
        model_out, starts_s, window_s, duration_s, species_k=options.species_k,
        min_conf=min_conf, candidates_per_window=options.candidates_per_window,
        species_rule=options.species_rule,
    )  # fmt: skip
    fe = detector.front_end
    low, high = (
        max(float(fe.f_min), band[0]),
        min(float(fe.f_max), band[1] if band[1] is not None else np.inf),
    )
    return RecordingResult(str(path), round(duration_s, 3), source_rate, confident(windows, min_conf),
                           low, high)  # fmt: skip


def timed(items: Iterator[Any], add_seconds: Callable[[float], None]) -> Iterator[Any]:
    """``items`` as they come, the time spent waiting for each passed to ``add_seconds``."""
    while True:
        started = time.perf_counter()
        try:
            item = next(items)
        except StopIteration:
            return
        finally:
            add_seconds(time.perf_counter() - started)
        yield item


class BatchRun:
    """reader → mapper → detector without files: recordings in, each one's result (or error) out."""

    def __init__(self, detector: Detector, options: BatchOptions, device: str = "auto"):
        """
        Args:
            detector: the loaded model and index.
            options: what to ask of every recording.
            device: where the model runs ("auto", "cpu", "cuda"): sets the default batch size.
        """
        self.detector = detector
        self.options = options
        self.window_s, self.hop_s = resolve_window(options, detector.front_end.window_s)
        self.limits = audio.AudioLimits(max_duration_s=options.max_duration_s)
        self.band = band_of(options, detector.front_end)
        self.batch_size = options.batch_size or default_batch(device)
        self.workers = options.workers or available_cpus()
        self.batches = SharedBatches(self.embed, self.batch_size, detector.front_end.window_samples)
        # Seconds per stage; "decode" is summed over the reader threads, "waiting" is the model's
        # thread waiting for them (decoding is the bottleneck when it grows).
        self.seconds = {"decode": 0.0, "waiting": 0.0, "model": 0.0, "search": 0.0}
        self.lock = threading.Lock()

    def facts(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "workers": self.workers, "forward_passes": self.batches.calls}

    def read(self, recording: Recording) -> Iterator[audio.WindowPart | Heard]:
        """The recording's windows as ``read_windows`` cuts them (on a reader thread), timed."""
        fe = self.detector.front_end
        items = read_windows(recording.path, fe.sample_rate, self.window_s, self.hop_s, fe.window_samples,
                             self.limits, self.band, per_part=self.batch_size)  # fmt: skip
        yield from timed(items, self.add_seconds("decode", self.lock))  # several reader threads add here

    def embed(self, windows: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        vectors = self.detector.embedder(windows)
        self.seconds["model"] += time.perf_counter() - started
        return vectors

    def run(self, todo: Sequence[Recording]) -> Iterator[tuple[Recording, RecordingResult | BaseException]]:
        """Each recording with its result or its error, as they are done (windows share forward passes,
        so a short recording may finish before a long one read earlier).

        A few recordings (``workers + 1``) are read at once, each a bounded queue of window parts
        ahead of the model, so memory holds a few parts per recording however long the recordings.
        """
        reading: dict[str, Reading] = {}
        with ThreadPoolExecutor(self.workers, thread_name_prefix="birdsearch-analyze-read") as pool:
            for recording, items in read_ahead_streams(pool, self.read, todo, ahead=self.workers + 1):
                state = reading[recording.name] = Reading(recording)
                held: list[np.ndarray] = []
                try:
                    for item in self.waited(items):
                        if isinstance(item, Heard):
                            state.heard = item
                            done = self.batches.add(recording.name, held, last=True)
                        else:
                            state.starts.append(item.starts_s)
                            held.append(item.samples)
                            if sum(len(h) for h in held) < HELD_WINDOWS:
                                continue
                            done = self.batches.add(recording.name, held, last=False)
                        held = []
                        yield from (self.finish(reading.pop(name), out) for name, out in done)
                # BirdsearchError from the decoders; anything else fails only this file
                except Exception as e:
                    if not isinstance(e, BirdsearchError):
                        log.exception("reading %s failed unexpectedly", recording.path)
                    self.batches.discard(recording.name)
                    reading.pop(recording.name, None)
                    yield recording, e
            for name, out in self.batches.flush():
                yield self.finish(reading.pop(name), out)

    def waited(self, items: Iterator[Any]) -> Iterator[Any]:
        """``items``, the time spent waiting for each counted as the model's thread waiting for decoding."""
        yield from timed(items, self.add_seconds("waiting"))

    def add_seconds(self, stage: str, lock: Any = None) -> Callable[[float], None]:
        """A callback adding seconds to ``stage``'s total, under ``lock`` when several threads add."""

        def add(seconds: float) -> None:
            with lock or contextlib.nullcontext():
                self.seconds[stage] += seconds

        return add

    def finish(self, state: Reading, model_out: np.ndarray) -> tuple[Recording, RecordingResult]:
        started = time.perf_counter()
        assert state.heard is not None  # a recording completes only after its last part
        result = recording_result(self.detector, self.options, state.recording.path, model_out,
                                  np.concatenate(state.starts), self.window_s, state.heard.duration_s,
                                  state.heard.source_rate, self.band)  # fmt: skip
        self.seconds["search"] += time.perf_counter() - started
        return state.recording, result


@dataclass
class Reading:
    """A recording whose windows are on their way through the model."""

    recording: Recording
    starts: list[np.ndarray] = field(default_factory=list)  # each part's window starts, seconds
    heard: Heard | None = None  # its length and rate, once its last window is read


def band_of(options: BatchOptions, front_end: Any) -> tuple[float, float | None]:
    """The band-pass of ``options`` ((fmin_hz, fmax_hz); (0, None): none), checked against the model's rate."""
    band = (options.fmin_hz, options.fmax_hz)
    audio.band_pass(
        np.zeros(8, np.float32), front_end.sample_rate, *band
    )  # ConfigError for an impossible band
    return band


class ReaderStopped(Exception):
    """The consumer of a recording's windows is gone: its reader stops."""


def read_ahead_streams(pool: ThreadPoolExecutor, read: Any, todo: Sequence[Recording], ahead: int,
                       depth: int = 2) -> Iterator[tuple[Recording, Iterator[Any]]]:  # fmt: skip
    """Each recording with the items ``read(recording)`` yields, in order, at most ``ahead`` read at once.

    Each recording's reader runs on ``pool`` and hands its items through a queue of ``depth``: a
    long recording is read as the model takes its windows, never far ahead of it. An error from
    the reader is raised from the items, where it happened.
    """
    from queue import Empty, Full, Queue

    stop = threading.Event()

    def produce(recording: Recording, queue: Queue) -> None:
        def put(item: Any) -> None:
            while True:
                try:
                    queue.put(item, timeout=0.1)
                    return
                except Full:
                    if stop.is_set():
                        raise ReaderStopped from None

        try:
            for item in read(recording):
                put(("item", item))
            put(("end", None))
        except ReaderStopped:
            return
        except BaseException as e:  # handed to the consumer, raised where it reads
            put(("error", e))

    def consume(queue: Queue, future: Future) -> Iterator[Any]:
        while True:
            try:
                kind, value = queue.get(timeout=0.1)
            except Empty:
                if future.done() and queue.empty():  # the reader ended without its last word
                    raise RuntimeError(f"the reader of a recording stopped: {future.exception()!r}") from None
                continue
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value

    started: deque[tuple[Recording, Queue, Future]] = deque()
    items = iter(todo)
    try:
        for recording in items:
            queue: Queue = Queue(maxsize=depth)
            started.append((recording, queue, pool.submit(produce, recording, queue)))
            if len(started) >= ahead:
                break
        while started:
            recording, queue, future = started.popleft()
            nxt = next(items, None)
            if nxt is not None:
                next_queue: Queue = Queue(maxsize=depth)
                started.append((nxt, next_queue, pool.submit(produce, nxt, next_queue)))
            yield recording, consume(queue, future)
    finally:
        stop.set()  # readers still running (the consumer stopped early) give up their recordings


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
