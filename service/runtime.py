"""What a running server holds, as three parts composed into one ``Runtime`` per app (per worker process).

- ``ComputeThread`` (``cpu_share``): the one thread every model call and search runs on, and the
  torch threads each call gets.
- ``Lifecycle`` (``lifecycle``): models, batchers, the decode pool and the served index, loaded at
  start, hot-swapped as new index versions are published, let go at stop.
- ``QueryPath`` (``query_path``): the pipeline of ``POST /query``.

The routes talk to ``Runtime`` only; it hands each question to the part that knows.
"""

from __future__ import annotations

from typing import Any, BinaryIO

from birdsearch.service.cpu_share import ComputeThread
from birdsearch.service.index_state import IndexHolder, ServedIndex
from birdsearch.service.lifecycle import Lifecycle, Models
from birdsearch.service.query_path import QueryPath
from birdsearch.service.schemas import QueryForm, QueryResponse
from birdsearch.service.settings import Settings
from birdsearch.service.thumbnails import ThumbnailCache

__all__ = ["Models", "Runtime"]


class Runtime:
    """Everything the routes need, started and stopped with the app."""

    def __init__(self, settings: Settings, models: Models | None = None):
        self.settings = settings
        self.compute = ComputeThread(
            settings.cores_per_worker, settings.decode_thread_count, settings.compute_threads
        )
        self.lifecycle = Lifecycle(settings, self.compute, models)
        self.queries = QueryPath(settings, self.lifecycle, self.compute)
        self.thumbnails = ThumbnailCache(settings.thumbnail_cache_bytes)

    async def start(self) -> None:
        await self.lifecycle.start()

    async def stop(self) -> None:
        await self.lifecycle.stop()

    async def query(self, upload: BinaryIO, form: QueryForm) -> QueryResponse:
        """Decode, window, embed (micro-batched), search and rank one uploaded recording."""
        return await self.queries.query(upload, form)

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
