"""From per-window search hits to the answer: images, a species ranking, and a timeline.

Each window of a recording is searched on its own: its ``C`` best images (``candidates``). Then

- a species' score in a window comes from its images among that window's candidates, by a rule
  (``species_rule``; absent when none of its images is among them). ``best`` (the best photo) lets a
  species with many gallery photos win more often than one with few: more draws, a higher maximum.
  The other rules pool several photos so that the count matters less (``SPECIES_RULES``); the
  default, ``lme:0.05`` (a soft maximum), was chosen that way on validation recordings;
- a species' score for the recording is its best window score: a bird that calls in one window of
  a two-minute soundscape is as present as one that calls throughout; ``windows`` counts the
  windows in which it ranks first;
- an image's score for the recording is its best score over the windows, with the window it came
  from.

Pure functions over arrays, tested against a plain-loop version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from birdsearch.errors import ConfigError

# How a species' score in a window pools its photos' scores among the window's candidates. A rule is
# ``NAME`` or ``NAME:PARAMETER``:
SPECIES_RULES = {
    "best": "the best photo",
    "mean-top": "mean of the M best photos (fewer when the species has fewer): mean-top:3",
    "kth": "the k-th best photo, k = ceil(Q x the species' photos in the gallery): kth:0.25",
    "lme": "log-mean-exp of the photos' scores at temperature T (T -> 0: best; large T: mean): lme:0.05",
}
# Chosen on the toy world's validation recordings with an unbalanced gallery (bench/photo_count_bias.py,
# BENCHMARKS.md "Unbalanced gallery"): the best species mAP over the distilled encoder and the cascade.
# At 0.05 one lucky photo among many far ones counts for little; a species' only photo scores itself.
DEFAULT_SPECIES_RULE = "lme:0.05"


@dataclass(frozen=True)
class SpeciesRule:
    name: str
    parameter: float | None = None

    def __str__(self) -> str:
        return self.name if self.parameter is None else f"{self.name}:{self.parameter:g}"


def parse_rule(text: str) -> SpeciesRule:
    """``"mean-top:3"`` -> ``SpeciesRule("mean-top", 3)``; a clear error for anything else."""
    name, _, value = str(text).strip().partition(":")
    usage = "; ".join(f"{k}: {v}" for k, v in SPECIES_RULES.items())
    if name not in SPECIES_RULES:
        raise ConfigError(f"unknown species rule {text!r}: use one of {usage}")
    if name == "best":
        if value:
            raise ConfigError(f"species rule {text!r}: 'best' takes no parameter")
        return SpeciesRule(name)
    try:
        parameter = float(value)
    except ValueError:
        raise ConfigError(
            f"species rule {text!r} needs a number after the colon ({SPECIES_RULES[name]})"
        ) from None
    valid = {
        "mean-top": parameter >= 1 and parameter == int(parameter),
        "kth": 0 < parameter <= 1,
        "lme": 0 < parameter < math.inf,
    }[name]
    if not valid:
        bounds = {"mean-top": "a whole number >= 1", "kth": "in (0, 1]", "lme": "a positive temperature"}[
            name
        ]
        raise ConfigError(f"species rule {text!r}: the parameter must be {bounds}")
    return SpeciesRule(name, parameter)


def window_species_scores(
    scores: np.ndarray,
    ids: np.ndarray,
    image_species: np.ndarray,
    n_species: int,
    rule: SpeciesRule | str = DEFAULT_SPECIES_RULE,
) -> np.ndarray:
    """(W, S) species scores per window from (W, C) hits, pooled by ``rule``; -inf where absent.

    The pool of a species in a window is its images among the window's candidates: a species with
    more photos than candidates is pooled over those that made the cut.
    """
    rule = parse_rule(rule) if isinstance(rule, str) else rule
    n_windows = scores.shape[0]
    per_window = np.full((n_windows, n_species), -np.inf, dtype=np.float32)
    valid = ids >= 0
    rows = np.broadcast_to(np.arange(n_windows)[:, None], ids.shape)[valid]
    cols = image_species[ids[valid]]
    values = scores[valid].astype(np.float32)
    known = cols >= 0
    rows, cols, values = rows[known], cols[known], values[known]
    if rule.name == "best" or values.size == 0:
        np.maximum.at(per_window, (rows, cols), values)
        return per_window
    groups = rows.astype(np.int64) * n_species + cols
    order = np.lexsort((-values, groups))  # by (window, species), best score first within each
    groups, values = groups[order], values[order]
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    sizes = np.diff(np.r_[starts, groups.size])
    rank = np.arange(groups.size) - np.repeat(starts, sizes)
    pooled = pool_groups(
        rule, values, rank, starts, sizes, groups[starts] % n_species, image_species, n_species
    )
    per_window.flat[groups[starts]] = pooled
    return per_window


def pool_groups(
    rule: SpeciesRule,
    values: np.ndarray,
    rank: np.ndarray,
    starts: np.ndarray,
    sizes: np.ndarray,
    species: np.ndarray,
    image_species: np.ndarray,
    n_species: int,
) -> np.ndarray:
    """One pooled score per (window, species) group of ``values`` sorted best first within groups."""
    if rule.name == "mean-top":
        m = int(rule.parameter)
        kept = np.where(rank < m, values, 0.0)
        return (np.add.reduceat(kept, starts) / np.minimum(sizes, m)).astype(np.float32)
    if rule.name == "kth":
        counts = np.bincount(image_species[image_species >= 0], minlength=n_species)
        k = np.maximum(1, np.ceil(rule.parameter * counts[species] - 1e-9)).astype(np.int64)
        return values[starts + np.minimum(k, sizes) - 1]
    # lme: T * log(mean(exp(s / T))), shifted by each group's best score for stability
    t = float(rule.parameter)
    best = np.repeat(values[starts], sizes)
    total = np.add.reduceat(np.exp((values - best) / t), starts)
    return (values[starts] + t * np.log(total / sizes)).astype(np.float32)


def describe(rule: SpeciesRule | str) -> str:
    """The rule in words, for the answer's aggregation facts."""
    rule = parse_rule(rule) if isinstance(rule, str) else rule
    if rule.name == "best":
        what = "max"
    elif rule.name == "mean-top":
        what = f"mean of the best {rule.parameter:g}"
    elif rule.name == "kth":
        what = f"the k-th best, k = ceil({rule.parameter:g} x the species' photos),"
    else:
        what = f"log-mean-exp at temperature {rule.parameter:g}"
    return f"{what} over the species' images among the window's candidates (species rule {rule})"


AGGREGATION = {
    "window_species_score": describe(DEFAULT_SPECIES_RULE),
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
    scores: np.ndarray,
    ids: np.ndarray,
    image_species: np.ndarray,
    n_species: int,
    rule: SpeciesRule | str = DEFAULT_SPECIES_RULE,
) -> SpeciesScores:
    """Aggregate (W, C) search hits into species scores.

    Args:
        scores: (W, C) similarities, best first; -inf for padding.
        ids: (W, C) image ids; -1 for padding.
        image_species: (N,) species row of each image id (its counts are the gallery's photo counts).
        n_species: S, the number of species rows.
        rule: how a window's photos of one species pool into its score (``SPECIES_RULES``).
    """
    return from_per_window(window_species_scores(scores, ids, image_species, n_species, rule))


def from_per_window(per_window: np.ndarray) -> SpeciesScores:
    """The recording's species scores from (W, S) window scores: the best window, and votes."""
    n_windows, n_species = per_window.shape
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
