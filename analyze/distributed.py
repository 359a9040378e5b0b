"""``analyze --runner ray``: decoding and the model on Ray Data, the way ``index --runner ray`` runs its
embedding stage (``birdsearch.indexer.distributed``).

- ``decode_batch`` (the reader) runs as Ray tasks on the cluster's CPUs, one recording a task: it
  decodes and cuts the recording as the local run does (``engine.batch.read_windows``), block by
  block, and emits one row per window a part at a time, then an end row with the recording's length;
  a recording that fails emits a row with its error, so it is listed, not lost;
- ``WindowEmbedder`` (the mapper) runs in an actor pool (``map_batches`` with ``concurrency``), one
  model per actor, built inside the worker, and one GPU each where the cluster has GPUs;
- the driver gathers each recording's window vectors and searches the index as the local run does
  (``engine.batch.recording_result``, the cascade's species head included), so the outputs are the
  local run's.

The driver holds the index and the models' small parts it needs (the cascade's species head); the
audio never passes through it. Needs the ``distributed`` extra (``pip install 'birdsearch[distributed]'``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from birdsearch.engine.detections import RecordingResult
from birdsearch.engine.inputs import Recording
from birdsearch.errors import BirdsearchError
from birdsearch.indexer.distributed import import_ray, ray_session, ray_uses_gpus

log = logging.getLogger(__name__)


class WorkerError(BirdsearchError):
    """A recording that failed on a Ray worker, with the code and message it failed with there."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


def decode_batch(batch: dict[str, np.ndarray], sample_rate: int, window_s: float, hop_s: float,
                 model_window: int, max_duration_s: float, band: tuple[float, float | None] = (0.0, None),
                 per_part: int = 64) -> Iterator[dict[str, np.ndarray]]:  # fmt: skip
    """Ray task: rows {'path', 'name'} to window rows, a part at a time as the recording is decoded.

    Each recording gives its windows (``kind`` "window", samples padded and band-passed as the local
    run's), then one "end" row with its window count, length and rate; a recording that fails gives
    an "error" row with its code and message, so it is listed, not lost. A batch is yielded per part,
    so a task holds a part of a long recording, never the whole of it.
    """
    from pathlib import Path

    from birdsearch.engine.batch import Heard, read_windows
    from birdsearch.model import audio

    limits = audio.AudioLimits(max_duration_s=max_duration_s)
    for path, name in zip(batch["path"], batch["name"], strict=True):
        count = 0
        try:
            for item in read_windows(Path(str(path)), sample_rate, window_s, hop_s, model_window, limits, band,
                                     per_part):  # fmt: skip
                if isinstance(item, Heard):
                    yield rows(name, "end", np.zeros((1, model_window), np.float32), [0.0], first=count,
                               windows=count, duration_s=item.duration_s, source_rate=item.source_rate)  # fmt: skip
                else:
                    yield rows(name, "window", item.samples, item.starts_s, first=count)
                    count += len(item.starts_s)
        except Exception as e:  # a decoder's surprise fails this recording, not the run (as locally)
            code = getattr(e, "code", None) or type(e).__name__
            yield rows(name, "error", np.zeros((1, model_window), np.float32), [0.0], first=count, code=str(code),
                       error=str(e))  # fmt: skip


def rows(name: str, kind: str, samples: np.ndarray, starts_s: Any, first: int, windows: int = 0,
         duration_s: float = 0.0, source_rate: int = 0, code: str = "", error: str = "") -> dict[str, np.ndarray]:  # fmt: skip
    """A batch of rows of one kind for one recording (one row per window; one for "end" and "error")."""
    n = len(samples)
    return {
        "name": np.array([str(name)] * n), "kind": np.array([kind] * n), "ok": np.array([kind == "window"] * n),
        "start_s": np.asarray(starts_s, np.float64), "window": np.arange(first, first + n),
        "windows": np.full(n, windows), "duration_s": np.full(n, duration_s), "source_rate": np.full(n, source_rate),
        "samples": np.asarray(samples, np.float32), "code": np.array([code] * n), "error": np.array([error] * n),
    }  # fmt: skip


class WindowEmbedder:
    """Ray actor: (B, window) samples to (B, D) model outputs with the mode's model, built in the worker."""

    def __init__(self, mode: str, checkpoint: str, student: str, device: str):
        from birdsearch.engine.embedders import load_mode_embedder

        self.embedder: Any = load_mode_embedder(mode, checkpoint, student, device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray(batch["ok"], dtype=bool)
        out = {key: value for key, value in batch.items() if key != "samples"}  # the audio stays here
        vectors = (
            self.embedder(np.ascontiguousarray(batch["samples"][ok], dtype=np.float32)) if ok.any() else None
        )
        dim = vectors.shape[1] if vectors is not None else self.embedder.facts.dim + self.embedder.tower_dim
        out["vector"] = np.zeros((len(ok), dim), np.float32)
        if vectors is not None:
            out["vector"][ok] = vectors
        return out


class RayAnalyser:
    """Recordings in, each one's result (or error) out, decoded and embedded on Ray Data."""

    def __init__(self, engine: Any, config: Any):  # engine.detector.Detector, analyze.config.AnalyzeConfig
        from birdsearch.engine.batch import band_of, default_batch, resolve_window

        self.engine = engine
        self.config = config
        self.window_s, self.hop_s = resolve_window(config, engine.front_end.window_s)
        self.band = band_of(config, engine.front_end)
        self.batch_size = config.batch_size or default_batch(config.device)
        self.seconds = {"ray": 0.0, "search": 0.0}  # "ray": the driver waiting for Ray's batches
        self.windows = 0

    def facts(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "ray_actors": self.config.ray_actors, "windows": self.windows}

    def run(self, todo: Sequence[Recording]) -> Iterator[tuple[Recording, RecordingResult | BaseException]]:
        """Each recording with its result or its error, as its last window comes back."""
        ray = import_ray()
        if not todo:
            return
        with ray_session(ray, self.config.ray_address):
            yield from self.gather(self.dataset(ray, todo), {r.name: r for r in todo})

    def dataset(self, ray: Any, todo: Sequence[Recording]) -> Any:
        """The reader and the mapper as a Ray Data pipeline over ``todo``."""
        config, fe = self.config, self.engine.front_end
        ray.data.DataContext.get_current().enable_progress_bars = config.progress
        use_gpu = ray_uses_gpus(ray, config.device)
        items = [{"path": str(r.path.resolve()), "name": r.name} for r in todo]  # workers have their own cwd
        decoded = ray.data.from_items(items).map_batches(
            decode_batch,
            fn_kwargs={"sample_rate": fe.sample_rate, "window_s": self.window_s, "hop_s": self.hop_s,
                       "model_window": fe.window_samples, "max_duration_s": config.max_duration_s,
                       "band": self.band, "per_part": self.batch_size},
            batch_size=1,  # one recording a task: recordings are what the cluster's CPUs share
        )  # fmt: skip
        return decoded.map_batches(
            WindowEmbedder,
            fn_constructor_kwargs={"mode": self.engine.embedder.facts.mode, "checkpoint": config.checkpoint,
                                   "student": config.student, "device": "cuda" if use_gpu else "cpu"},
            batch_size=self.batch_size,
            concurrency=config.ray_actors,
            num_gpus=1 if use_gpu else 0,
        )  # fmt: skip

    def gather(self, dataset: Any, by_name: dict[str, Recording]
               ) -> Iterator[tuple[Recording, RecordingResult | BaseException]]:  # fmt: skip
        """Windows back from Ray, grouped by recording; a recording is searched once its end row and all its
        windows are in (Ray may hand them back in any order)."""
        pending: dict[str, dict[int, tuple[float, np.ndarray]]] = {}
        ends: dict[str, tuple[int, float, int]] = {}  # name -> (windows, duration_s, source_rate)
        failed: set[str] = set()
        waited = time.perf_counter()
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            self.seconds["ray"] += time.perf_counter() - waited
            for i, name in enumerate(str(n) for n in batch["name"]):
                if name in failed:
                    continue
                kind = str(batch["kind"][i])
                if kind == "error":
                    failed.add(name)
                    pending.pop(name, None)
                    yield by_name[name], WorkerError(str(batch["error"][i]), str(batch["code"][i]))
                    continue
                windows = pending.setdefault(name, {})
                if kind == "end":
                    ends[name] = (
                        int(batch["windows"][i]),
                        float(batch["duration_s"][i]),
                        int(batch["source_rate"][i]),
                    )
                else:
                    windows[int(batch["window"][i])] = (float(batch["start_s"][i]), batch["vector"][i])
                if name in ends and len(windows) == ends[name][0]:
                    del pending[name]
                    count, duration_s, source_rate = ends.pop(name)
                    yield by_name[name], self.finish(by_name[name], windows, duration_s, source_rate)
            waited = time.perf_counter()
        for name in pending:  # Ray lost windows: say so rather than write a partial table
            yield (
                by_name[name],
                WorkerError(f"{by_name[name].path}: windows missing from Ray's output", "ray_error"),
            )

    def finish(self, recording: Recording, windows: dict[int, tuple[float, np.ndarray]], duration_s: float,
               source_rate: int) -> RecordingResult:  # fmt: skip
        from birdsearch.engine.batch import recording_result

        started = time.perf_counter()
        order = sorted(windows)
        starts = np.array([windows[w][0] for w in order])
        model_out = np.stack([windows[w][1] for w in order]).astype(np.float32)
        result = recording_result(self.engine, self.config, recording.path, model_out, starts, self.window_s,
                                  duration_s, source_rate, self.band)  # fmt: skip
        self.seconds["search"] += time.perf_counter() - started
        self.windows += len(order)
        return result
