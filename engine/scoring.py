"""A recording's window vectors searched and scored: candidates, species scores, confidences, novelty.

Each window is searched on its own for its nearest photos (its candidates); a species' score in a
window pools its photos among them by the species rule (``ranking``); a calibration turns the window
scores into confidences; the mode's gate (``gate``) says which windows are novel, unlike the
recordings the model knows. Everything the engine answers starts here: the API's ranking and timeline
(``answer``), the detections of ``analyze`` and of the Python API (``detections``), and the scores a
calibration is fitted on (``calibrate``). Runs on a worker thread (FAISS and SQLite work).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from birdsearch.engine import ranking
from birdsearch.engine.metrics import stage_timer

if TYPE_CHECKING:
    from birdsearch.engine.index_state import ServedIndex


@dataclass(frozen=True)
class WindowScores:
    """The windows of one recording after search and scoring."""

    scores: np.ndarray  # (W, C) candidates' cosine similarities, best first; -inf for padding
    ids: np.ndarray  # (W, C) candidates' image ids; -1 for padding
    candidates: int  # C: photos searched per window
    species: ranking.SpeciesScores  # per window (W, S) and for the recording (S,)
    confidence: np.ndarray | None  # (W, S) calibrated confidences; None without a calibration
    novelty: np.ndarray | None = None  # (W,) the gate's novelty of each window; None without a gate
    novel: np.ndarray | None = None  # (W,) bool: the windows the gate calls novel; None without a gate

    def is_novel(self, window: int) -> bool:
        return bool(self.novel is not None and self.novel[window])

    def level(self, window: int, row: int) -> float:
        """What a threshold compares: the confidence, or the raw score without a calibration."""
        source = self.confidence if self.confidence is not None else self.species.per_window
        return float(source[window, row])


def search(
    served: ServedIndex, vectors: np.ndarray, k: int, allowed: np.ndarray | None, candidates_per_window: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Each window's nearest images among those allowed: (scores (W, C), ids (W, C), C).

    C is enough candidates both to rank species (``candidates_per_window``) and to fill ``k`` photos,
    and never more than the images there are to search.
    """
    pool = len(allowed) if allowed is not None else served.version.count
    candidates = max(1, min(max(k, candidates_per_window), pool))
    with stage_timer("search"):
        scores, ids = served.version.search(vectors, candidates, ids=allowed)
    return scores, ids, candidates


def score_windows(
    served: ServedIndex,
    vectors: np.ndarray,
    allowed: np.ndarray | None,
    candidates_per_window: int,
    rule: ranking.SpeciesRule | str,
    calibration: Any = None,
    k: int = 1,
    gate: Any = None,
    embeddings: np.ndarray | None = None,
    tower: np.ndarray | None = None,
) -> WindowScores:
    """Search (W, D) window vectors and score each species in each window.

    Args:
        served: the index version to search.
        vectors: (W, D) queries in the teacher's space (the cascade's species head already applied).
        allowed: image ids the filters allow; None: all.
        candidates_per_window: photos searched per window to score species.
        rule: how a species' photos among a window's candidates pool into its score.
        calibration: a ``birdsearch.model.calibration.Platt`` (None: no confidences).
        k: photos the answer lists (the search takes at least this many candidates).
        gate: the mode's ``birdsearch.engine.gate.Gate`` (None: no window is novel).
        embeddings, tower: (W, ...) the model's embeddings and tower features of the windows
            (``embedders.split_outputs``), which the gate measures.
    """
    scores, ids, candidates = search(served, vectors, k, allowed, candidates_per_window)
    species = ranking.species_scores(scores, ids, served.image_species, len(served.species), rule)
    confidence = calibration(species.per_window) if calibration is not None else None
    if gate is None:
        return WindowScores(scores, ids, candidates, species, confidence)
    novelty = gate.novelty(tower, embeddings, confidence, served)
    return WindowScores(scores, ids, candidates, species, confidence, novelty, gate.open_set.novel(novelty))


def image_records(served: ServedIndex, image_ids: list[int]) -> dict[int, Any]:
    """The index's records of these images, by id (an empty index has none to read)."""
    records = served.version.images(image_ids) if served.version.count else []
    return {record.id: record for record in records}


def window_photo(
    served: ServedIndex, scores: np.ndarray, ids: np.ndarray, window: int, row: int
) -> tuple[int, float]:
    """Species ``row``'s best photo among window ``window``'s candidates and its score ((-1, nan) when none)."""
    photo = ranking.best_image_of_species(scores[window : window + 1], ids[window : window + 1],
                                          served.image_species, row)  # fmt: skip
    if photo < 0:
        return photo, float("nan")
    return photo, float(scores[window][ids[window] == photo].max())
