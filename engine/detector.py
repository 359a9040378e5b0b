"""The engine for work in bulk: a mode's model and the published index, loaded once.

A ``Detector`` turns the model's outputs for a recording's windows into scored windows and
detections, as a query's are made (``scoring.score_windows``, ``detections.window_detections``):
``analyze`` (in-process and on Ray), the Python API's ``analyze`` and calibration fitting all run
through it. ``Detector.load`` opens the index, resolves a species list against it (a typo fails
before any model loads) and loads the model of the mode.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from birdsearch.engine.config import EngineConfig
from birdsearch.engine.detections import Detection, window_detections
from birdsearch.engine.scoring import WindowScores, score_windows
from birdsearch.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Detector:
    """A mode's model and an index version: model outputs of windows to scored windows and detections."""

    embedder: Any  # birdsearch.engine.embedders.DistilledEmbedder or StudentEmbedder
    served: Any  # birdsearch.engine.index_state.ServedIndex
    allowed: np.ndarray | None  # image ids of the species list; None: every image
    species_names: list[str] | None  # the species list as the index spells it
    calibration: Any = None  # birdsearch.model.calibration.Platt of the mode; None: raw scores

    @property
    def front_end(self) -> Any:
        return self.embedder.front_end

    @property
    def mode(self) -> str:
        return str(self.embedder.mode)

    def vectors(self, model_out: np.ndarray) -> np.ndarray:
        """Model outputs to teacher-space queries (the cascade's species head runs here)."""
        return self.served.cascade(model_out) if self.mode == "cascade" else model_out

    def score(self, vectors: np.ndarray, candidates_per_window: int, species_rule: str) -> WindowScores:
        """(W, D) teacher-space window vectors searched among the allowed photos and scored."""
        return score_windows(self.served, vectors, self.allowed, candidates_per_window, species_rule,
                             self.calibration)  # fmt: skip

    def detect(
        self, vectors: np.ndarray, starts_s: np.ndarray, window_s: float, duration_s: float, *, species_k: int,
        min_conf: float | None, candidates_per_window: int, species_rule: str,
    ) -> list[list[Detection]]:  # fmt: skip
        """Each window's detections (``detections.window_detections``) from its (W, D) vectors."""
        scored = self.score(vectors, candidates_per_window, species_rule)
        return window_detections(self.served, scored, starts_s, window_s, duration_s, species_k, min_conf)

    @classmethod
    def load(cls, config: EngineConfig, mode: str = "auto", species_list: Path | None = None,
             strict_species_list: bool = False) -> Detector:  # fmt: skip
        """Open the published index, resolve the species list against it, load the model for the mode.

        Args:
            config: the models, the index root, the device and the calibration to use.
            mode: "distilled", "cascade" or "auto" (distilled when ``config`` names a checkpoint).
            species_list: only these species (scientific names or BirdNET lines); None: all.
            strict_species_list: refuse a list naming species the index lacks (by default they are
                skipped with a warning that gives the nearest names).
        """
        from birdsearch.engine.confidence import calibration_for
        from birdsearch.engine.embedders import DistilledEmbedder, StudentEmbedder
        from birdsearch.engine.index_state import prepare
        from birdsearch.indexer.store import IndexRoot
        from birdsearch.model.device import resolve_device

        mode = chosen_mode(mode, bool(config.checkpoint))
        index_device = "cuda" if resolve_device(config.device).type == "cuda" else "cpu"
        version = IndexRoot(config.index_root).open_current(device=index_device)
        names = listed_species(species_list, version, strict_species_list)  # before the models load
        if mode == "distilled":
            embedder, student = DistilledEmbedder.load(config.checkpoint, config.device), None
        else:
            embedder = student = StudentEmbedder.load(config.student, config.device)
        served = prepare(version, embedder if mode == "distilled" else None, student)
        if mode == "cascade" and served.cascade is None:
            raise ConfigError(f"index {version.name} has no species for the cascade to classify against")
        allowed = version.ids_for(species=names) if names is not None else None
        calibration = calibration_for(mode, config.calibration, config.checkpoint, config.index_root)
        return cls(embedder, served, allowed, names, calibration)


def chosen_mode(mode: str, have_checkpoint: bool) -> str:
    """'auto' to distilled (with a checkpoint) or cascade; distilled without a checkpoint is an error."""
    chosen = mode if mode != "auto" else ("distilled" if have_checkpoint else "cascade")
    if chosen == "distilled" and not have_checkpoint:
        raise ConfigError("mode 'distilled' needs a distilled encoder: give --checkpoint DIR")
    return chosen


def listed_species(species_list: Path | None, version: Any, strict: bool) -> list[str] | None:
    """The species list's names as ``version`` spells its species; None without a list."""
    from birdsearch.engine.species_list import STRICT_HINT, read_species_list, resolve_species_list

    if species_list is None:
        return None
    entries = read_species_list(species_list)
    return resolve_species_list(
        entries, version.species(), strict, index=f"index {version.name}", hint=STRICT_HINT
    )
