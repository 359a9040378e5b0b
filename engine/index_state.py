"""The index being served, and its hot swap when ``birdsearch reindex`` publishes a new version.

``IndexHolder`` polls the index root's ``CURRENT`` pointer (one small file read) every
``reload_interval_s``. When it names a new version, the version is opened and prepared on a worker
thread (FAISS index, species table, the species steps of the modes that classify) while the old one keeps
answering; then one reference assignment swaps them. A request reads ``holder.current`` once, at
its start, and uses that ``ServedIndex`` to the end, so requests in flight finish on the version
they began with and none fails; the old version is freed when the last of them lets go.

A version that does not fit the models (another teacher, another dimension) or fails to open is
refused, logged and counted; the previous one stays in service.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from birdsearch.engine.embedders import DistilledEmbedder, ModeHead, StudentEmbedder
from birdsearch.engine.metrics import INDEX_IMAGES, INDEX_RELOADS
from birdsearch.engine.redact import model_name
from birdsearch.errors import BirdsearchError, IndexFormatError
from birdsearch.model.student import PROMPT

log = logging.getLogger(__name__)


@dataclass
class ServedIndex:
    """One opened index version with everything a query needs from it."""

    version: Any  # birdsearch.indexer.store.IndexVersion
    species: list[Any]  # SpeciesRecord, sorted by scientific name
    species_row: dict[str, int]  # scientific name -> row in ``species``
    image_species: np.ndarray  # (N,) int32: row in ``species`` of each image id
    heads: dict[str, ModeHead]  # each mode's index-dependent species step (cascade, classifier, hybrid)
    loaded_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return str(self.version.name)

    def describe(self) -> dict[str, Any]:
        manifest = self.version.manifest
        return {
            "name": self.name,
            "count": int(self.version.count),
            "dim": int(self.version.dim),
            "species": len(self.species),
            "index_type": str(manifest.get("index_type", "")),
            "teacher": model_name(str(manifest.get("teacher", {}).get("id", ""))),
            "created": str(manifest.get("created", "")),
            # recall@10 against exact search per query kind (species_text, audio, self); {} when exact
            "recall": {
                kind: float(r["recall_at_10"]) for kind, r in (manifest.get("recall_by_query") or {}).items()
            },
        }


def check_compatible(version: Any, distilled: DistilledEmbedder | None) -> None:
    """Refuse an index the distilled encoder cannot query: another teacher or dimension."""
    if distilled is None:
        return
    wanted = distilled.facts.teacher
    have = version.teacher
    if int(version.dim) != distilled.facts.dim:
        raise IndexFormatError(
            f"index {version.name} holds {version.dim}-d vectors but the distilled encoder outputs "
            f"{distilled.facts.dim}-d: rebuild the index with the encoder's teacher ({wanted.get('id')})"
        )
    ours, theirs = wanted.get("weights_sha256"), have.get("weights_sha256")
    if ours and theirs and ours != theirs:
        raise IndexFormatError(
            f"index {version.name} was built with teacher {have.get('id')} (weights {theirs[:12]}), the "
            f"distilled encoder targets {wanted.get('id')} (weights {ours[:12]}): rebuild one of them"
        )


def prepare(
    version: Any, distilled: DistilledEmbedder | None, student: StudentEmbedder | None
) -> ServedIndex:
    """Everything a query needs from ``version`` (runs on a worker thread: SQLite reads, text tower)."""
    check_compatible(version, distilled)
    species = version.species()
    species_row = {record.scientific: row for row, record in enumerate(species)}
    image_species = np.full(int(version.count), -1, dtype=np.int32)
    for row, record in enumerate(species):
        image_species[version.ids_for(species=record.scientific)] = row
    heads = species_steps(version, species, distilled, student) if student is not None and species else {}
    return ServedIndex(version, species, species_row, image_species, heads)


def species_steps(
    version: Any, species: list[Any], distilled: DistilledEmbedder | None, student: StudentEmbedder
) -> dict[str, ModeHead]:
    """The species step of each mode that classifies, over this version's species.

    The cascade classifies against the student's captions of them; with an encoder that carries a
    species classifier, ``classifier`` and ``hybrid`` too (``birdsearch.model.species_head``).
    """
    import torch

    from birdsearch.model.query import CascadeQuery
    from birdsearch.model.species_head import mode_queries

    names, teacher_species = version.species_embeddings()
    common = {record.scientific: record.common for record in species}
    # The student hears common names ("Sound of a American Robin"), as Student.embed_species(.., "com").
    captions = student.student.embed_texts([PROMPT.format(common.get(name) or name) for name in names])
    teacher = torch.from_numpy(np.asarray(teacher_species))
    heads = {"cascade": ModeHead(CascadeQuery(student.student, captions, teacher))}
    head = getattr(getattr(distilled, "encoder", None), "species_head", None)
    if head is not None:
        scale = float(student.student.model.logit_scale_a.exp())
        distilled_scale = 1.0 / float(distilled.encoder.card.training.get("final_temperature") or 0.07)
        queries = mode_queries(head, list(names), captions, teacher, scale, distilled_scale)
        heads["classifier"] = ModeHead(queries["classifier"])
        heads["hybrid"] = ModeHead(queries["hybrid"], split=student.facts.dim)
    return heads


class IndexHolder:
    """Keeps the published index version open and swaps in new ones as they are published."""

    def __init__(
        self,
        root: Path,
        open_version: Callable[[str], Any],
        prepare_version: Callable[[Any], ServedIndex],
        interval_s: float = 5.0,
        executor: Executor | None = None,
    ):
        """
        Args:
            root: the index root (``birdsearch.indexer.store.IndexRoot``).
            open_version: version name to an opened IndexVersion.
            prepare_version: IndexVersion to ServedIndex (see ``prepare``).
            interval_s: seconds between looks at the pointer; 0 never looks (admin reload only).
            executor: where versions are loaded and prepared (the engine's compute thread);
                default: asyncio's thread pool.
        """
        from birdsearch.indexer.store import IndexRoot

        self.root = IndexRoot(root)
        self.open_version = open_version
        self.prepare_version = prepare_version
        self.interval_s = interval_s
        self.executor = executor
        self.current: ServedIndex | None = None
        self.last_error: str | None = None  # why the last load failed, for /readyz
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None

    async def refresh(self) -> bool:
        """Load the published version if it is not the one being served; True when it swapped."""
        async with self._lock:  # one load at a time, whoever asks (the watcher or an admin)
            name = self.root.current_name()
            if name is None:
                self.last_error = (
                    f"no index published in {self.root.path} yet (build one with 'birdsearch index')"
                )
                return False
            if self.current is not None and self.current.name == name:
                return False
            try:
                served = await asyncio.get_running_loop().run_in_executor(self.executor, self._load, name)
            except BirdsearchError as e:
                self.last_error = f"index version {name} refused: {e}"
                INDEX_RELOADS.labels("refused").inc()
                log.error(
                    "%s; still serving %s", self.last_error, self.current.name if self.current else "nothing"
                )
                return False
            previous, self.current = self.current, served
            self.last_error = None
            INDEX_RELOADS.labels("loaded").inc()
            INDEX_IMAGES.set(served.version.count)
            log.info("serving index %s (%d images)%s", name, served.version.count,
                     f", was {previous.name}" if previous else "")  # fmt: skip
            return True

    def _load(self, name: str) -> ServedIndex:
        return self.prepare_version(self.open_version(name))

    def start(self) -> None:
        """Look for new versions every ``interval_s`` seconds in the background."""
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="index-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # the watcher must outlive any surprise; the next look tries again
                log.exception("looking for a new index version failed")
            await asyncio.sleep(self.interval_s)
