"""The engine for work in bulk: a mode's model and the published index, loaded once.

A ``Detector`` turns the model's outputs for a recording's windows into scored windows and
detections, as a query's are made (``scoring.score_windows``, ``detections.window_detections``);
windows its mode's gate calls novel give none:
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

from birdsearch.engine.config import CLASSIFYING_MODES, ENCODER_MODES, EngineConfig
from birdsearch.engine.detections import Detection, window_detections
from birdsearch.engine.embedders import split_outputs
from birdsearch.engine.scoring import WindowScores, score_windows
from birdsearch.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Detector:
    """A mode's model and an index version: model outputs of windows to scored windows and detections."""

    embedder: Any  # the mode's embedder (birdsearch.engine.embedders)
    served: Any  # birdsearch.engine.index_state.ServedIndex
    allowed: np.ndarray | None  # image ids of the species list; None: every image
    species_names: list[str] | None  # the species list as the index spells it
    calibration: Any = None  # birdsearch.model.calibration.Platt of the mode; None: raw scores
    gate: Any = None  # birdsearch.engine.gate.Gate of the mode; None: no window is novel

    @property
    def front_end(self) -> Any:
        return self.embedder.front_end

    @property
    def mode(self) -> str:
        return str(self.embedder.mode)

    @property
    def default_min_conf(self) -> float | None:
        """The threshold chosen with the mode's gate on validation (None without one)."""
        return self.gate.min_conf if self.gate is not None else None

    def vectors(self, model_out: np.ndarray) -> np.ndarray:
        """Model outputs to teacher-space queries (the species step of a mode that classifies runs here)."""
        embeddings, _ = split_outputs(model_out, self.embedder.facts.dim)
        head = self.served.heads.get(self.mode)
        return head(embeddings) if head is not None else embeddings

    def score(self, model_out: np.ndarray, candidates_per_window: int, species_rule: str) -> WindowScores:
        """The windows' model outputs (``embedders.split_outputs``) searched among the allowed photos, scored
        and measured by the gate."""
        embeddings, tower = split_outputs(model_out, self.embedder.facts.dim)
        return score_windows(self.served, self.vectors(model_out), self.allowed, candidates_per_window,
                             species_rule, self.calibration, gate=self.gate, embeddings=embeddings, tower=tower)  # fmt: skip

    def detect(
        self, model_out: np.ndarray, starts_s: np.ndarray, window_s: float, duration_s: float, *, species_k: int,
        min_conf: float | None, candidates_per_window: int, species_rule: str,
    ) -> list[list[Detection]]:  # fmt: skip
        """Each window's detections (``detections.window_detections``) from its model outputs; none in a
        window the gate calls novel."""
        scored = self.score(model_out, candidates_per_window, species_rule)
        return window_detections(self.served, scored, starts_s, window_s, duration_s, species_k, min_conf,
                                 skip_novel=True)  # fmt: skip

    @classmethod
    def load(cls, config: EngineConfig, mode: str = "auto", species_list: Path | None = None,
             strict_species_list: bool = False, gate: bool = True) -> Detector:  # fmt: skip
        """Open the published index, resolve the species list against it, load the model for the mode.

        Args:
            config: the models, the index root, the device and the calibration to use.
            mode: "distilled", "cascade", "classifier", "hybrid" or "auto" (the checkpoint's recorded
                default when ``config`` names one, else the cascade).
            species_list: only these species (scientific names or BirdNET lines); None: all.
            strict_species_list: refuse a list naming species the index lacks (by default they are
                skipped with a warning that gives the nearest names).
            gate: load the mode's open-set gate (fitting one starts without).
        """
        from birdsearch.engine.confidence import calibration_for
        from birdsearch.engine.embedders import load_mode_embedder
        from birdsearch.engine.gate import gate_for
        from birdsearch.engine.index_state import prepare
        from birdsearch.indexer.store import IndexRoot
        from birdsearch.model.device import resolve_device

        mode = chosen_mode(mode, config.checkpoint)
        index_device = "cuda" if resolve_device(config.device).type == "cuda" else "cpu"
        version = IndexRoot(config.index_root).open_current(device=index_device)
        names = listed_species(species_list, version, strict_species_list)  # before the models load
        embedder = load_mode_embedder(mode, config.checkpoint, config.student, config.device)
        served = prepare(version, *models_of(embedder))
        if mode in CLASSIFYING_MODES and mode not in served.heads:
            raise ConfigError(f"index {version.name} has no species for mode {mode!r} to classify against")
        allowed = version.ids_for(species=names) if names is not None else None
        calibration = calibration_for(mode, config.calibration, config.checkpoint, config.index_root)
        found = (
            gate_for(mode, config.calibration, config.checkpoint, config.index_root, embedder)
            if gate
            else None
        )
        return cls(embedder, served, allowed, names, calibration, found)


def chosen_mode(mode: str, checkpoint: str) -> str:
    """'auto' to the checkpoint's recorded default (or the cascade without one); a mode of an encoder
    without a checkpoint is an error."""
    from birdsearch.engine.config import recorded_default

    chosen = mode if mode != "auto" else (recorded_default(checkpoint) if checkpoint else "cascade")
    if chosen in ENCODER_MODES and not checkpoint:
        raise ConfigError(f"mode {chosen!r} needs a distilled encoder: give --checkpoint DIR")
    return chosen


def models_of(embedder: Any) -> tuple[Any, Any]:
    """(distilled encoder, student) a mode's embedder runs (either may be None), for ``prepare``."""
    if embedder.mode == "distilled":
        return embedder, None
    if embedder.mode == "cascade":
        return None, embedder
    return embedder.distilled, embedder.student


def listed_species(species_list: Path | None, version: Any, strict: bool) -> list[str] | None:
    """The species list's names as ``version`` spells its species; None without a list."""
    from birdsearch.engine.species_list import STRICT_HINT, read_species_list, resolve_species_list

    if species_list is None:
        return None
    entries = read_species_list(species_list)
    return resolve_species_list(
        entries, version.species(), strict, index=f"index {version.name}", hint=STRICT_HINT
    )
