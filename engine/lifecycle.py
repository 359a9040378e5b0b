"""What a worker loads at start and lets go at stop: models, batchers, the decode pool, the served index.

``Lifecycle.start`` loads the models (a bad checkpoint stops the server at once, with the reason)
and opens the published index (a missing one does not: the server answers 503 on /readyz and
/query until one is published, which the index watcher notices and hot-swaps in).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from birdsearch import __version__
from birdsearch.engine.batcher import MicroBatcher
from birdsearch.engine.config import EngineConfig
from birdsearch.engine.cpu_share import ComputeThread
from birdsearch.engine.embedders import DistilledEmbedder, StudentEmbedder, mode_embedder
from birdsearch.engine.errors import NotReadyError
from birdsearch.engine.index_state import IndexHolder, ServedIndex, prepare
from birdsearch.engine.metrics import BATCH_REQUESTS, BATCH_ROWS
from birdsearch.engine.redact import redact_paths
from birdsearch.engine.schemas import IndexInfo
from birdsearch.model.device import resolve_device

log = logging.getLogger(__name__)


@dataclass
class Models:
    """The loaded models; tests build one and share it between apps."""

    distilled: DistilledEmbedder | None = None
    student: StudentEmbedder | None = None
    cascade: bool = True  # whether the student also serves the zero-shot cascade

    @classmethod
    def load(cls, config: EngineConfig) -> Models:
        """Load what the config asks for (raises CheckpointError/ModelUnavailableError with the fix).

        The student loads for the cascade, and for the modes ``classifier`` and ``hybrid`` of an
        encoder that carries a species classifier.
        """
        distilled = DistilledEmbedder.load(config.checkpoint, config.device) if config.checkpoint else None
        classifies = distilled is not None and distilled.encoder.species_head is not None
        wanted = config.cascade_enabled or classifies
        student = StudentEmbedder.load(config.student, config.device) if wanted else None
        models = cls(distilled, student, config.cascade_enabled)
        if config.compile:
            for embedder in (distilled, student):
                if embedder is not None:
                    embedder.compile()
            for embedder in models.by_mode().values():
                warm_up(embedder)
        return models

    def by_mode(self) -> dict[str, Any]:
        """The embedder each servable mode runs its windows through (built once)."""
        if "_modes" not in self.__dict__:
            self.__dict__["_modes"] = self._modes()
        return self.__dict__["_modes"]

    def _modes(self) -> dict[str, Any]:
        modes: dict[str, Any] = {}
        if self.distilled is not None:
            modes["distilled"] = self.distilled
        if self.student is not None and self.cascade:
            modes["cascade"] = self.student
        encoder = getattr(self.distilled, "encoder", None)
        if self.student is not None and encoder is not None and encoder.species_head is not None:
            for mode in ("classifier", "hybrid"):
                modes[mode] = mode_embedder(mode, self.distilled, self.student)
        return modes


def warm_up(embedder: Any) -> None:
    """Run batches of 2 and 1 silent windows, so that compilation happens before /readyz says ready."""
    for size in (2, 1):
        embedder(np.zeros((size, embedder.front_end.window_samples), dtype=np.float32))


def batch_observer(mode: str) -> Any:
    """The batcher's callback that counts each batch's rows and requests into the metrics."""

    def observe(rows: int, requests: int, seconds: float) -> None:
        BATCH_ROWS.labels(mode).observe(rows)
        BATCH_REQUESTS.labels(mode).observe(requests)

    return observe


class Lifecycle:
    """Loads, serves and stops the worker's models and index; says what is loaded and whether it is ready."""

    def __init__(self, config: EngineConfig, compute: ComputeThread, models: Models | None = None):
        self.config = config
        self.compute = compute
        self.models = models  # preloaded (tests share them between apps), else loaded by ``start``
        self.batchers: dict[str, MicroBatcher] = {}
        self.gates: dict[str, Any] = {}  # each mode's open-set gate (engine.gate.Gate), when it has one
        self.holder: IndexHolder | None = None
        self.decode_pool: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self.compute.start()
        if self.models is None:
            self.models = await self.compute.run(Models.load, self.config)
        self.gates = await self.compute.run(self._load_gates)
        self.decode_pool = ThreadPoolExecutor(
            self.config.decode_thread_count, thread_name_prefix="birdsearch-decode"
        )
        for mode, embedder in self.models.by_mode().items():
            self.batchers[mode] = self._batcher(mode, embedder)
            self.batchers[mode].start()
        await self._serve_index()

    def _load_gates(self) -> dict[str, Any]:
        from birdsearch.engine.gate import gate_for

        assert self.models is not None
        c = self.config
        found = {mode: gate_for(mode, c.calibration, c.checkpoint, c.index_root, embedder)
                 for mode, embedder in self.models.by_mode().items()}  # fmt: skip
        return {mode: gate for mode, gate in found.items() if gate is not None}

    async def stop(self) -> None:
        if self.holder is not None:
            await self.holder.stop()
        for batcher in self.batchers.values():
            await batcher.stop()
        if self.decode_pool is not None:
            self.decode_pool.shutdown(wait=False)
        self.compute.shutdown()

    def _batcher(self, mode: str, embedder: Any) -> MicroBatcher:
        """The mode's micro-batcher, running its batches on the compute thread."""
        return MicroBatcher(
            partial(self.compute.run_sized, embedder),
            max_batch=self.config.batch_size,
            max_wait_s=self.config.max_wait_ms / 1000,
            name=mode,
            observe=batch_observer(mode),
            allocate=embedder.staging,
            executor=self.compute.executor,
        )

    async def _serve_index(self) -> None:
        """Open the published version now and watch for newer ones (hot reload)."""
        self.holder = IndexHolder(
            self.config.index_root,
            partial(self.compute.run_sized, self._open_version),
            partial(self.compute.run_sized, self._prepare),
            self.config.reload_interval_s,
            executor=self.compute.executor,
        )
        await self.holder.refresh()
        self.holder.start()

    def _open_version(self, name: str) -> Any:
        from birdsearch.indexer.store import IndexRoot

        device = "cuda" if resolve_device(self.config.device).type == "cuda" else "cpu"
        return IndexRoot(self.config.index_root).open(name, device=device)

    def _prepare(self, version: Any) -> ServedIndex:
        assert self.models is not None
        return prepare(version, self.models.distilled, self.models.student)

    # -- what is loaded ------------------------------------------------------------------------

    def default_mode_reason(self) -> str | None:
        """Why mode=auto is what it is: the encoder card's record of its validation choice."""
        from birdsearch.model.species_head import recorded_modes

        encoder = getattr(self.models.distilled if self.models else None, "encoder", None)
        return recorded_modes(encoder.card).get("why") if encoder is not None else None

    @property
    def modes(self) -> list[str]:
        return list(self.batchers)

    def served(self) -> ServedIndex:
        """The index version to answer with, or NotReadyError saying why there is none."""
        current = self.holder.current if self.holder is not None else None
        if current is None:
            reason = self.holder.last_error if self.holder is not None else None
            raise NotReadyError(redact_paths(reason) if reason else "the server is still starting")
        return current

    def readiness(self) -> tuple[bool, str | None]:
        """(ready, detail); ready with a detail when a newer index version was refused."""
        try:
            self.served()
        except NotReadyError as e:
            return False, str(e)
        refused = self.holder.last_error if self.holder is not None else None
        return True, redact_paths(refused) if refused else None

    def versions(self) -> dict[str, Any]:
        assert self.models is not None
        current = self.holder.current if self.holder is not None else None
        return {
            "birdsearch": __version__,
            "api": 1,
            "default_mode": self.config.default_mode,
            "default_mode_reason": self.default_mode_reason(),
            "modes": self.modes,
            "models": {mode: vars(m.facts) for mode, m in self.models.by_mode().items()},
            "open_set": {mode: gate.describe() for mode, gate in self.gates.items()},
            "index": IndexInfo(**current.describe()) if current else None,
        }
