"""The Python API, ``birdsearch.Birdsearch``: the engine in this process, for notebooks and scripts.

``Birdsearch`` starts the engine's ``Runtime`` (models, micro-batcher, compute thread, the published
index), as the HTTP app does, on a private event loop in a background thread, so it works the same
in a plain script and inside Jupyter, whose own event loop is already running. ``query`` returns the
``QueryResponse`` that ``POST /query`` returns; ``analyze`` yields each recording's detections as
``birdsearch analyze`` finds them (the engine's ``BatchRun``), with the same models and index,
writing no files. A door beside the HTTP app and ``analyze``: it imports neither.

    with Birdsearch(index_root="index", checkpoint="models/encoder") as bs:
        answer = bs.query("dawn.flac", species_k=3)
        for recording in bs.analyze(["card07/"], min_conf=0.3):
            ...
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from birdsearch.engine.detections import RecordingResult

log = logging.getLogger(__name__)
T = TypeVar("T")


class Birdsearch:
    """Models and index loaded once in this process; ``query`` and ``analyze`` recordings against them."""

    def __init__(self, index_root: str | Path | None = None, checkpoint: str | Path = "", **settings: Any):
        """
        Args:
            index_root: the index root holding the published versions (default: the service's).
            checkpoint: distilled encoder folder; empty: the zero-shot cascade answers.
            settings: any other field of ``birdsearch.engine.config.EngineSettings`` (``student``,
                ``device``, ``cascade``, ``max_duration_s``, ...). The environment's ``BIRDSEARCH_*``
                variables (and ``BIRDSEARCH_CONFIG``'s file) apply as for the server; these arguments win.

        Raises ConfigError for bad settings, CheckpointError/ModelUnavailableError for models that
        cannot load, NotReadyError when no index is published in ``index_root``.
        """
        from birdsearch.engine.config import EngineSettings, read_settings
        from birdsearch.engine.runtime import Runtime

        given = {"checkpoint": str(checkpoint), "reload_interval_s": 0, **settings}
        if index_root is not None:
            given["index_root"] = Path(index_root)
        self.settings = read_settings(EngineSettings, **given)
        self.runtime = Runtime(self.settings.engine_config())
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="birdsearch-inprocess", daemon=True
        )
        self._thread.start()
        try:
            self._call(self.runtime.start())
            self.runtime.served()  # NotReadyError, with the reason, when there is no index to search
        except BaseException:
            self.close()
            raise

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the private loop and wait for its result (exceptions are re-raised here)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def query(self, recording: str | Path | bytes | BinaryIO, **form: Any) -> Any:
        """The answer of ``POST /query`` for ``recording`` (a path, bytes or a binary file object).

        ``form`` takes the fields of the request: ``k``, ``species_k``, ``window_s``, ``hop_s``,
        ``species``, ``genus``, ``family``, ``order``, ``mode``. Returns a
        ``birdsearch.engine.schemas.QueryResponse``; typed errors as the HTTP API's (AudioError,
        BadParameterError, ...).
        """
        from birdsearch.engine.schemas import Question

        if isinstance(recording, str | Path):
            with open(recording, "rb") as opened:
                return self.query(opened, **{"filename": Path(recording).name, **form})
        upload: BinaryIO = io.BytesIO(recording) if isinstance(recording, bytes) else recording
        form.pop("filename", None)  # the engine reads the bytes; a name tells it nothing
        return self._call(self.runtime.query(upload, Question(**form)))

    def analyze(self, inputs: str | Path | Sequence[str | Path], **options: Any) -> Iterator[RecordingResult]:
        """Each recording's detections, as ``birdsearch analyze`` finds them; no files are written.

        Args:
            inputs: files, folders (recursive) and glob patterns.
            options: fields of ``birdsearch.engine.batch.BatchOptions``: ``min_conf``, ``species_k``,
                ``species_list``, ``strict_species_list``, ``species_rule``, ``window_s``, ``hop_s``,
                ``batch_size``, ``workers``, ``max_duration_s``, ``mode``.

        Yields a ``RecordingResult`` (path, duration, detections) per recording, in the order they
        are done. A recording that cannot be analysed is logged with its reason and skipped.
        """
        from birdsearch.engine.batch import BatchOptions, BatchRun
        from birdsearch.engine.detector import Detector, chosen_mode, listed_species
        from birdsearch.engine.inputs import find_recordings
        from birdsearch.engine.query_path import how_to_load

        paths = [str(inputs)] if isinstance(inputs, str | Path) else [str(i) for i in inputs]
        options = {"species_rule": self.settings.species_rule, **options}  # the server's rule unless given
        config = BatchOptions(**options)
        mode = chosen_mode(config.mode, self.settings.checkpoint)
        embedders = self.runtime.models.by_mode() if self.runtime.models else {}
        if mode not in embedders:
            from birdsearch.errors import ConfigError

            raise ConfigError(f"mode {mode!r} is not loaded here: {how_to_load(mode)}")
        served = self.runtime.served()
        names = listed_species(config.species_list, served.version, config.strict_species_list)
        allowed = served.version.ids_for(species=names) if names is not None else None
        calibration = self.runtime.queries.calibrations.get(mode)  # the server's, as its min_conf uses
        recordings, problems = find_recordings(paths)
        for item, reason in problems:
            log.warning("input %s: %s", item, reason)
        gate = self.runtime.lifecycle.gates.get(mode)  # the server's, as its answers use it
        detector = Detector(embedders[mode], served, allowed, names, calibration, gate)
        for _, outcome in BatchRun(detector, config, self.settings.device).run(recordings):
            if isinstance(outcome, BaseException):
                log.warning("%s", outcome)
                continue
            yield outcome

    def close(self) -> None:
        """Stop the runtime and its threads (also on leaving a ``with`` block)."""
        if self._loop.is_closed():
            return
        try:
            self._call(self.runtime.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> Birdsearch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
