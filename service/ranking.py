"""From per-window search hits to the answer: images, a species ranking, and a timeline.

Each window of a recording is searched on its own: its ``C`` best images (``candidates``). Then

- a species' score in a window is the best score among its images in that window's candidates
  (absent when none of its images is among them);
- a species' score for the recording is its best window score: a bird that calls in one window of
  a two-minute soundscape is as present as one that calls throughout; ``windows`` counts the
  windows in which it ranks first;
- an image's score for the recording is its best score over the windows, with the window it came
  from.

Pure functions over arrays, tested against a plain-loop version.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AGGREGATION = {
    "window_species_score": "max over the species' images among the window's candidates",
    "recording_species_score": "max over windows",
    "species_windows": "number of windows in which the species ranks first",
    "recording_image_score": "max over windows",
}


@dataclass(frozen=True)
class SpeciesScores:
    """Species scores per window and for the whole recording; -inf where a species is absent."""

    per_window: np.ndarray  # (W, S) float32
    recording: np.ndarray  # (S,) float32: max over windows
    top_windows: np.ndarray  # (S,) int: windows where the species ranks first
    best_window: np.ndarray  # (S,) int: window of the recording score (-1 when absent)


def species_scores(
    scores: np.ndarray, ids: np.ndarray, image_species: np.ndarray, n_species: int
) -> SpeciesScores:
    """Aggregate (W, C) search hits into species scores.

    Args:
        scores: (W, C) similarities, best first; -inf for padding.
        ids: (W, C) image ids; -1 for padding.
        image_species: (N,) species row of each image id.
        n_species: S, the number of species rows.
    """
    n_windows = scores.shape[0]
    per_window = np.full((n_windows, n_species), -np.inf, dtype=np.float32)
    valid = ids >= 0
    rows = np.broadcast_to(np.arange(n_windows)[:, None], ids.shape)[valid]
    cols = image_species[ids[valid]]
    known = cols >= 0
    np.maximum.at(per_window, (rows[known], cols[known]), scores[valid][known].astype(np.float32))
    recording = per_window.max(axis=0) if n_windows else np.full(n_species, -np.inf, np.float32)
    present = np.isfinite(per_window).any(axis=1)
    winners = per_window[present].argmax(axis=1)
    top_windows = np.bincount(winners, minlength=n_species)
    best_window = np.where(np.isfinite(recording), per_window.argmax(axis=0), -1)
    return SpeciesScores(per_window, recording, top_windows, best_window)


def top_species(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` best finite scores, best first (ties: lower row first)."""
    finite = np.flatnonzero(np.isfinite(scores))
    order = finite[np.lexsort((finite, -scores[finite]))]
    return order[:k]


@dataclass(frozen=True)
class ImageScore:
    id: int
    score: float
    window: int  # the window whose search gave the best score


def best_images(scores: np.ndarray, ids: np.ndarray, k: int) -> list[ImageScore]:
    """The ``k`` best distinct images over all windows, each with its best score and window."""
    valid = ids >= 0
    flat_ids, flat_scores = ids[valid], scores[valid]
    flat_windows = np.broadcast_to(np.arange(ids.shape[0])[:, None], ids.shape)[valid]
    order = np.lexsort((flat_windows, flat_ids, -flat_scores))  # best score first, then id, then window
    seen: set[int] = set()
    out: list[ImageScore] = []
    for i in order:
        image = int(flat_ids[i])
        if image in seen:
            continue
        seen.add(image)
        out.append(ImageScore(image, float(flat_scores[i]), int(flat_windows[i])))
        if len(out) == k:
            break
    return out


def best_image_of_species(scores: np.ndarray, ids: np.ndarray, image_species: np.ndarray, row: int) -> int:
    """The highest-scoring candidate image of species ``row`` over all windows (-1 when none)."""
    valid = ids >= 0
    mask = np.zeros_like(valid)
    mask[valid] = image_species[ids[valid]] == row
    if not mask.any():
        return -1
    masked = np.where(mask, scores, -np.inf)
    return int(ids.flat[int(np.argmax(masked))])
