"""Each mode's open-set gate in the engine: where it is found, and which windows are novel.

A gate (``birdsearch.model.novelty.OpenSet``: a novelty signal, its threshold and the ``min_conf``
chosen with it on validation recordings; fitted by ``birdsearch.engine.calibrate``) lives in
``open_set.json`` beside the mode's calibration file (``confidence.calibration_place``: the
``BIRDSEARCH_CALIBRATION`` file's folder when set, else the distilled encoder's folder, or the index
root for the cascade). A signal that measures against reference windows reads them from the mode's
folder (``novelty_reference.*``: the encoder's, which ``birdsearch distill`` writes; the index root's
for the cascade).

A window is **novel** when its novelty is above the gate's threshold: its audio is unlike the
recordings the model knows, and it abstains with that reason. A mode without a gate (an encoder
distilled before gates existed, or never calibrated) answers as before, with a warning at start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from birdsearch.engine.confidence import calibration_place, mode_folder
from birdsearch.errors import ConfigError
from birdsearch.model.novelty import (
    NON_BIRD_PROMPTS,
    OPEN_SET_FILE,
    Evidence,
    OpenSet,
    PromptNovelty,
    Signal,
    load_open_set,
    load_reference,
    make_signal,
)

log = logging.getLogger(__name__)

NOVEL, BELOW_MIN_CONF = "novel", "below_min_conf"  # why a window abstains
REASONS = {
    NOVEL: "unlike the recordings the model knows",
    BELOW_MIN_CONF: "no species reached min_conf",
}


@dataclass
class Gate:
    """A mode's gate, loaded: its signal ready to measure windows."""

    mode: str
    open_set: OpenSet
    signal: Signal | None  # None for "prompts", whose species depend on the index version served
    prompt_vectors: np.ndarray | None = None  # the student's embeddings of NON_BIRD_PROMPTS ("prompts")

    @property
    def min_conf(self) -> float | None:
        """The confidence threshold chosen with the gate on validation: the mode's default."""
        return self.open_set.min_conf

    def novelty(self, tower: np.ndarray, embeddings: np.ndarray, confidences: np.ndarray | None,
                served: Any) -> np.ndarray:  # fmt: skip
        """(W,) novelty of windows from their tower features, embeddings and calibrated confidences."""
        signal = self.signal
        if signal is None:  # prompts against the served version's species captions
            query = served.heads["cascade"].query
            signal = PromptNovelty(self.prompt_vectors, query.student_species.numpy(), query.logit_scale)
        return signal(Evidence(tower=tower, embeddings=embeddings, confidences=confidences))

    def describe(self) -> dict[str, Any]:
        """What ``GET /version`` says about the gate."""
        o = self.open_set
        return {"signal": o.signal, "params": o.params, "threshold": round(o.threshold, 6), "min_conf": o.min_conf,
                "chosen_on": {k: o.facts[k] for k in ("validation_mean_auroc", "keep", "target_precision")
                              if k in o.facts}}  # fmt: skip


def open_set_place(mode: str, calibration: str, checkpoint: str, index_root: Path) -> Path | None:
    """Where ``mode``'s gate file is: beside its calibration file."""
    place = calibration_place(mode, calibration, checkpoint, index_root)
    return place.with_name(OPEN_SET_FILE) if place is not None else None


def gate_for(mode: str, calibration: str, checkpoint: str, index_root: Path, embedder: Any) -> Gate | None:
    """``mode``'s gate (``embedder``: the mode's loaded model, for the prompts' text tower); None, with a
    warning that says how to fit one, when there is none or what it needs is missing."""
    place = open_set_place(mode, calibration, checkpoint, index_root)
    entry = load_open_set(place).get(mode) if place is not None and place.is_file() else None
    if entry is None:
        log.warning("no open-set gate for mode %s (%s): windows unlike the recordings the model knows are "
                    "answered like any other; fit one with 'python -m birdsearch.engine.calibrate'", mode, place)  # fmt: skip
        return None
    if entry.signal == "prompts":
        if not hasattr(embedder, "student"):
            raise ConfigError(
                f"{place}: mode {mode!r}'s gate reads prompts, which need the cascade's student"
            )
        vectors = embedder.student.embed_texts(list(NON_BIRD_PROMPTS)).numpy()
        return Gate(mode, entry, None, vectors)
    reference = None
    if entry.signal in ("knn", "mahalanobis"):
        reference = load_reference(mode_folder(mode, checkpoint, index_root) or Path("."))
        if reference is None:
            return None  # load_reference said why
        if reference.dim != embedder.tower_dim:
            log.warning("the novelty reference of mode %s has %d-d features, the model's tower %d-d: it belongs "
                        "to another model; serving without the gate", mode, reference.dim, embedder.tower_dim)  # fmt: skip
            return None
    log.info("open-set gate of mode %s: %s %s above %.4g is novel, min_conf %s", mode, entry.signal,
             entry.params, entry.threshold, entry.min_conf)  # fmt: skip
    return Gate(mode, entry, make_signal(entry.signal, entry.params, reference))
