"""``analyze``: recordings in, detections out; the models and the index load once per run.

reader → mapper → writer, in one process (the driver that picks a runner and writes is ``run.py``):

- **reader**: decoding threads (libsndfile, soxr and FFmpeg release the GIL) turn each recording
  into windows (``audio.load`` and the service's ``recording.plan_windows``), a bounded number of
  recordings ahead of the model;
- **mapper**: ``SharedBatches`` runs the windows of many recordings through shared forward passes
  of the service's embedder (distilled encoder, or the cascade's student and species head);
- **writer**: each recording's windows are searched in the index like a query's; every species
  whose window confidence reaches ``min_conf`` (at most ``species_k`` a window) is a detection, with the
  best photo of that species for that window; the outputs are written atomically, then a state file
  that records the settings' hash, so that a rerun skips what is done.

A recording that fails (unreadable, silent, too long) is listed with its reason in
``failures.csv`` and the run goes on. The combined tables are rebuilt at the end of every run from
the state files of the recordings named in that run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from birdsearch.cpus import available_cpus
from birdsearch.engine.confidence import calibration_for
from birdsearch.engine.ranking import DEFAULT_SPECIES_RULE, parse_rule
from birdsearch.errors import BirdsearchError, ConfigError
from birdsearch.model.calibration import describe as describe_calibration
from birdsearch.model.hub import DEFAULT_STUDENT
from birdsearch.service.analyze import formats
from birdsearch.service.analyze.batches import SharedBatches
from birdsearch.service.analyze.formats import Detection, RecordingResult
from birdsearch.service.analyze.inputs import Recording

log = logging.getLogger(__name__)

STATE_DIR = ".birdsearch"  # per-recording state files, below the output folder
RUN_FILE = "run.json"
FAILURES_FILE = "failures.csv"
COMBINED_NAME = "combined"
FILE_LIST_SUFFIX = ".birdsearch.files.txt"  # the combined Raven table's recordings, in order
GPU_BATCH, CPU_BATCH = 64, 8  # windows per forward pass when none is given


@dataclass(frozen=True)
class AnalyzeConfig:
    """One ``analyze`` run."""

    inputs: Sequence[str]  # files, folders (recursive) and glob patterns
    out: Path  # output folder (created)
    index_root: Path  # holds the published index versions
    checkpoint: str = ""  # distilled encoder; empty: the zero-shot cascade
    student: str = DEFAULT_STUDENT  # the cascade's student spec
    mode: str = "auto"  # "distilled", "cascade" or "auto" (distilled when a checkpoint is given)
    device: str = "auto"
    formats: Sequence[str] = formats.FORMATS
    min_conf: float = 0.1  # detections need a calibrated confidence at least this (the raw score without a calibration)
    calibration: str = ""  # calibration file; empty: calibration.json beside the encoder / in the index root
    species_k: int = 5  # at most this many species per window
    window_s: float | None = None  # default: the model's window
    hop_s: float | None = None  # default: the window (no overlap)
    species_list: Path | None = None  # only these species (scientific names or BirdNET lines)
    skip_unknown_species: bool = False  # skip listed species the index lacks instead of failing
    candidates_per_window: int = 200  # images searched per window to score species
    species_rule: str = DEFAULT_SPECIES_RULE  # how a species' photos pool into its window score (the service's)
    batch_size: int = 0  # windows per forward pass; 0: 64 on a GPU, 8 on a CPU
    workers: int = 0  # decoding threads; 0: the cores this process may use
    max_duration_s: float = 3600.0  # longer recordings are listed as failures (decoded audio is in memory)
    progress: bool = True
    url: str = ""  # a running query service to send the recordings to instead of loading models (remote.py)
    runner: str = "local"  # "local" (this process) or "ray" (decoding and the model on Ray Data: distributed.py)
    ray_address: str | None = None  # the Ray cluster (None: RAY_ADDRESS, else a local instance)
    ray_actors: int = 1  # model actors (one model, and one GPU where there are GPUs, each)

    def __post_init__(self) -> None:
        if self.species_k < 1:
            raise ConfigError(f"species_k={self.species_k} must be at least 1")
        if self.mode not in ("auto", "distilled", "cascade"):
            raise ConfigError(f"mode {self.mode!r}: use auto, distilled or cascade")
        if self.batch_size < 0 or self.workers < 0:
            raise ConfigError("batch_size and workers must be 0 (automatic) or positive")
        if self.max_duration_s <= 0:
            raise ConfigError(f"max_duration_s={self.max_duration_s:g} must be positive")
        if self.runner not in ("local", "ray"):
            raise ConfigError(f"runner {self.runner!r}: use local or ray")
        if self.url and self.runner != "local":
            raise ConfigError("--url sends the work to a server; it does not combine with --runner ray")
        if self.ray_actors < 1:
            raise ConfigError(f"ray_actors={self.ray_actors} must be at least 1")
        formats.parse_formats(",".join(self.formats))
        parse_rule(self.species_rule)  # ConfigError listing the rules


@dataclass
class Summary:
    """What a run did; also written to ``run.json``."""

    recordings: int = 0  # found in the inputs
    analysed: int = 0
    skipped: int = 0  # done by an earlier run with the same settings
    failed: int = 0
    detections: int = 0
    audio_s: float = 0.0  # seconds of audio analysed in this run
    wall_s: float = 0.0
    settings_hash: str = ""
    stage_s: dict[str, float] = field(default_factory=dict)  # decode, waiting, model, search, write
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (file, code, reason)

    @property
    def audio_hours_per_s(self) -> float:
        return self.audio_s / 3600 / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class Engine:
    """Models and index, loaded once: windows to detections."""

    embedder: Any  # birdsearch.engine.embedders.DistilledEmbedder or StudentEmbedder
    served: Any  # birdsearch.engine.index_state.ServedIndex
    allowed: np.ndarray | None  # image ids of the species list; None: every image
    species_names: list[str] | None  # the species list as the index spells it
    calibration: Any = None  # birdsearch.model.calibration.Platt of the mode; None: raw scores

    @property
    def front_end(self) -> Any:
        return self.embedder.front_end

    def vectors(self, model_out: np.ndarray) -> np.ndarray:
        """Model outputs to teacher-space queries (the cascade's species head runs here)."""
        return self.served.cascade(model_out) if self.embedder.mode == "cascade" else model_out


def load_engine(config: AnalyzeConfig) -> Engine:
    """Open the published index, resolve the species list against it, load the model for the mode."""
    from birdsearch.engine.embedders import DistilledEmbedder, StudentEmbedder
    from birdsearch.engine.index_state import prepare
    from birdsearch.indexer.store import IndexRoot
    from birdsearch.model.device import resolve_device

    mode = chosen_mode(config.mode, bool(config.checkpoint))
    index_device = "cuda" if resolve_device(config.device).type == "cuda" else "cpu"
    version = IndexRoot(config.index_root).open_current(device=index_device)
    names = listed_species(config, version)  # before the models load: a typo fails fast
    if mode == "distilled":
        embedder, student = DistilledEmbedder.load(config.checkpoint, config.device), None
    else:
        embedder = student = StudentEmbedder.load(config.student, config.device)
    served = prepare(version, embedder if mode == "distilled" else None, student)
    if mode == "cascade" and served.cascade is None:
        raise ConfigError(f"index {version.name} has no species for the cascade to classify against")
    allowed = version.ids_for(species=names) if names is not None else None
    calibration = calibration_for(mode, config.calibration, config.checkpoint, config.index_root)
    if calibration is None and config.inputs:  # fitting one (no inputs) needs none yet
        log.warning("no calibration for mode %s: --min-conf %g applies to the raw pooled cosine score", mode,
                    config.min_conf)  # fmt: skip
    return Engine(embedder, served, allowed, names, calibration)


def chosen_mode(mode: str, have_checkpoint: bool) -> str:
    """'auto' to distilled (with a checkpoint) or cascade; distilled without a checkpoint is an error."""
    chosen = mode if mode != "auto" else ("distilled" if have_checkpoint else "cascade")
    if chosen == "distilled" and not have_checkpoint:
        raise ConfigError("mode 'distilled' needs a distilled encoder: give --checkpoint DIR")
    return chosen


def listed_species(config: AnalyzeConfig, version: Any) -> list[str] | None:
    """The species list of ``config`` as ``version`` spells its species; None without a list."""
    from birdsearch.engine.species_list import read_species_list, resolve_species_list

    if config.species_list is None:
        return None
    entries = read_species_list(config.species_list)
    return resolve_species_list(entries, version.species(), config.skip_unknown_species,
                                index=f"index {version.name}")  # fmt: skip


def settings_hash(config: AnalyzeConfig, engine: Engine, window_s: float, hop_s: float) -> tuple[str, dict]:
    """What decides a recording's detections, and its hash: outputs made with another are redone."""
    settings = settings_of(config, engine, window_s, hop_s)
    return digest_of(settings), settings


def digest_of(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def settings_of(config: AnalyzeConfig, engine: Engine, window_s: float, hop_s: float) -> dict:
    """The settings of an in-process (or Ray) run that decide its detections."""
    facts = engine.embedder.facts
    settings = {
        "mode": facts.mode,
        # The spec as given, and its folder when it is one: ids in answers may leave paths out.
        "model": config.checkpoint if facts.mode == "distilled" else config.student,
        "model_path": local_path(config.checkpoint if facts.mode == "distilled" else config.student),
        "model_details": facts.details,
        "index": engine.served.name,
        "window_s": window_s,
        "hop_s": hop_s,
        "min_conf": config.min_conf,
        "calibration": describe_calibration(engine.calibration) if engine.calibration is not None else None,
        "species_k": config.species_k,
        "candidates_per_window": config.candidates_per_window,
        "species_rule": str(parse_rule(config.species_rule)),
        "species_list": engine.species_names,
        "max_duration_s": config.max_duration_s,
    }
    return settings


def local_path(spec: str) -> str:
    """The absolute path of a model spec that names a local file or folder, else ""."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if spec and path.exists() else ""


def detect(
    engine: Engine, vectors: np.ndarray, starts_s: np.ndarray, window_s: float, duration_s: float,
    config: AnalyzeConfig,
) -> list[Detection]:  # fmt: skip
    """Search each window's vector and keep its best species whose confidence reaches ``config.min_conf``.

    The search and the scores are the query path's (``answer.search``, ``ranking.species_scores``
    with the species rule): a species' window score pools its photos among the window's candidates;
    the engine's calibration makes it a confidence (without one the raw score stands in for it).
    The detection's photo is the species' best photo in that window, with its own score.
    """
    from birdsearch.engine import answer, ranking

    served = engine.served
    scores, ids, _ = answer.search(served, vectors, 1, engine.allowed, config.candidates_per_window)
    per_window = ranking.species_scores(scores, ids, served.image_species, len(served.species),
                                        config.species_rule).per_window  # fmt: skip
    confidence = engine.calibration(per_window) if engine.calibration is not None else per_window
    found: list[tuple[int, int, float, int, float]] = []  # (window, species row, score, photo id, photo score)
    for w in range(len(starts_s)):
        for row in ranking.top_species(per_window[w], config.species_k):
            if confidence[w, row] < config.min_conf:
                continue
            photo, photo_score = answer.window_photo(served, scores, ids, w, int(row))
            found.append((w, int(row), float(per_window[w, row]), photo, photo_score))
    photos = answer.image_records(served, [f[3] for f in found]) if found else {}
    detections = []
    for w, row, score, photo_id, photo_score in found:
        species, photo = served.species[row], photos[photo_id]
        start = float(starts_s[w])
        detections.append(Detection(
            round(start, 3), round(min(start + window_s, duration_s), 3), species.scientific, species.common,
            round(float(confidence[w, row]), 6), photo_id, round(photo_score, 6), photo.license,
            photo.attribution, photo.content_hash, round(score, 6),
        ))  # fmt: skip
    return detections


# -- the run -------------------------------------------------------------------------------------


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


class Outputs:
    """The output folder: per-recording files, state files, combined tables, failures."""

    def __init__(self, out: Path, chosen: Sequence[str], digest: str):
        self.out = out
        self.formats = list(chosen)
        self.digest = digest

    def path(self, name: str, fmt: str) -> Path:
        return self.out / f"{name}{formats.SUFFIXES[fmt]}"

    def state_path(self, name: str) -> Path:
        return self.out / STATE_DIR / f"{name}.json"

    @staticmethod
    def fingerprint(path: Path) -> dict[str, int]:
        stat = path.stat()
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def done(self, recording: Recording) -> RecordingResult | None:
        """The stored result when this recording was analysed with these settings and is unchanged."""
        try:
            state = json.loads(self.state_path(recording.name).read_text())
        except (OSError, ValueError):
            return None
        if state.get("settings") != self.digest or state.get("source") != self.fingerprint(recording.path):
            return None
        if not all(self.path(recording.name, fmt).is_file() for fmt in self.formats):
            return None
        try:
            return RecordingResult.from_dict(state["result"])
        except (KeyError, TypeError):
            return None

    def write(self, recording: Recording, result: RecordingResult) -> None:
        """The recording's files, then its state file (so a crash in between redoes the recording)."""
        for fmt in self.formats:
            formats.write_atomic(self.path(recording.name, fmt), formats.render(fmt, [result]))
        state = {"settings": self.digest, "source": self.fingerprint(recording.path), "result": result.to_dict()}
        formats.write_atomic(self.state_path(recording.name), json.dumps(state))

    def write_combined(self, results: Sequence[RecordingResult]) -> None:
        for fmt in self.formats:
            if fmt in formats.COMBINED:
                text = formats.render(fmt, results, combined=True)
                formats.write_atomic(self.out / f"{COMBINED_NAME}{formats.SUFFIXES[fmt]}", text)
        if "raven" in self.formats:
            files = "".join(f"{r.path}\n" for r in results)
            formats.write_atomic(self.out / f"{COMBINED_NAME}{FILE_LIST_SUFFIX}", files)

    def write_failures(self, failures: Sequence[tuple[str, str, str]]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(("file", "code", "reason"))
        writer.writerows(failures)
        formats.write_atomic(self.out / FAILURES_FILE, buffer.getvalue())


def resolve_window(config: AnalyzeConfig, model_window_s: float) -> tuple[float, float]:
    window_s = config.window_s or model_window_s
    if not 1.0 <= window_s <= model_window_s:
        raise ConfigError(f"window_s={window_s:g} must be between 1 and the model's window of {model_window_s:g} s")
    from birdsearch.engine.config import EngineConfig

    hop_s = config.hop_s or window_s
    min_hop_s = EngineConfig.min_hop_s  # the service's floor, for the same reason
    if hop_s < min_hop_s:
        raise ConfigError(f"hop_s={hop_s:g} is below the minimum of {min_hop_s:g} s: each window costs a forward pass")
    return window_s, hop_s


def default_batch(device: str) -> int:
    from birdsearch.model.device import resolve_device

    return GPU_BATCH if resolve_device(device).type == "cuda" else CPU_BATCH


def usable_cores() -> int:
    """The cores this process may use: affinity and cgroup quota (``birdsearch.cpus``)."""
    return available_cpus()


class Analyser:
    """reader → mapper → writer without the files: recordings in, each one's result (or error) out."""

    def __init__(self, engine: Engine, config: AnalyzeConfig):
        from birdsearch.model import audio

        self.engine = engine
        self.config = config
        self.window_s, self.hop_s = resolve_window(config, engine.front_end.window_s)
        self.settings = settings_of(config, engine, self.window_s, self.hop_s)
        self.limits = audio.AudioLimits(max_duration_s=config.max_duration_s)
        self.batch_size = config.batch_size or default_batch(config.device)
        self.workers = config.workers or usable_cores()
        self.batches = SharedBatches(self.embed, self.batch_size, engine.front_end.window_samples)
        # Seconds per stage; "decode" is summed over the reader threads, "waiting" is the model's
        # thread waiting for them (decoding is the bottleneck when it grows).
        self.seconds = {"decode": 0.0, "waiting": 0.0, "model": 0.0, "search": 0.0}
        self.lock = threading.Lock()

    def facts(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "workers": self.workers, "forward_passes": self.batches.calls}

    def read(self, recording: Recording) -> Decoded:
        fe = self.engine.front_end
        started = time.perf_counter()
        try:
            return read_windows(recording, fe.sample_rate, self.window_s, self.hop_s, fe.window_samples, self.limits)
        finally:
            with self.lock:  # several reader threads add here
                self.seconds["decode"] += time.perf_counter() - started

    def embed(self, windows: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        vectors = self.engine.embedder(windows)
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
        engine, config, fe = self.engine, self.config, self.engine.front_end
        started = time.perf_counter()
        detections = detect(engine, engine.vectors(model_out), item.starts_s, self.window_s, item.duration_s, config)
        self.seconds["search"] += time.perf_counter() - started
        result = RecordingResult(str(item.recording.path), round(item.duration_s, 3), item.source_rate,
                                 detections, float(fe.f_min), float(fe.f_max))  # fmt: skip
        return item.recording, result


def read_ahead(pool: ThreadPoolExecutor, read: Any, todo: Sequence[Recording], ahead: int
               ) -> Iterator[tuple[Recording, Decoded | BaseException]]:  # fmt: skip
    """Each recording with its decoded windows or its error, in order, at most ``ahead`` decoding at once.

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


