"""The engine as a server runs it, three parts composed into one ``Runtime`` per worker process (the
HTTP app's, or the Python API's in a notebook).

- ``ComputeThread`` (``cpu_share``): the one thread every model call and search runs on, and the
  torch threads each call gets.
- ``Lifecycle`` (``lifecycle``): models, batchers, the decode pool and the served index, loaded at
  start, hot-swapped as new index versions are published, let go at stop.
- ``QueryPath`` (``query_path``): the pipeline of ``POST /query``.

The doors talk to ``Runtime`` only; it hands each question to the part that knows.
"""

from __future__ import annotations

from typing import Any, BinaryIO

from birdsearch.engine.config import EngineConfig
from birdsearch.engine.cpu_share import ComputeThread
from birdsearch.engine.index_state import IndexHolder, ServedIndex
from birdsearch.engine.lifecycle import Lifecycle, Models
from birdsearch.engine.query_path import QueryPath
from birdsearch.engine.schemas import QueryResponse, Question

__all__ = ["Models", "Runtime"]


class Runtime:
    """Everything a door needs to answer questions, started and stopped with it."""

    def __init__(self, config: EngineConfig, models: Models | None = None):
        self.config = config
        self.compute = ComputeThread(config.core_count, config.decode_thread_count, config.compute_threads)
        self.lifecycle = Lifecycle(config, self.compute, models)
        self.queries = QueryPath(config, self.lifecycle, self.compute)

    async def start(self) -> None:
        await self.lifecycle.start()

    async def stop(self) -> None:
        await self.lifecycle.stop()

    async def query(self, upload: BinaryIO, question: Question) -> QueryResponse:
        """Decode, window, embed (micro-batched), search and rank one uploaded recording."""
        return await self.queries.query(upload, question)

    @property
    def models(self) -> Models | None:
        return self.lifecycle.models

    @property
    def holder(self) -> IndexHolder | None:
        return self.lifecycle.holder

    @property
    def modes(self) -> list[str]:
        return self.lifecycle.modes

    def served(self) -> ServedIndex:
        """The index version to answer with, or NotReadyError saying why there is none."""
        return self.lifecycle.served()

    def readiness(self) -> tuple[bool, str | None]:
        """(ready, detail); ready with a detail when a newer index version was refused."""
        return self.lifecycle.readiness()

    def versions(self) -> dict[str, Any]:
        """Software, API, model and index versions for ``GET /version``."""
        return self.lifecycle.versions()
