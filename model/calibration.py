"""Calibrated confidence for window species scores: Platt scaling, expected calibration error, storage.

A window's species score (pooled cosine similarity, ``birdsearch.engine.ranking``) is not a
probability: its scale depends on the model, the gallery and the species rule. A Platt fit maps it
to one, per (window, species):

    confidence = sigmoid(w . features + bias)     features: the score, and maybe its contrast


fit by maximum likelihood on labelled windows held out from training, each (window, species) pair
with a finite score an example: positive when that species calls in the window, negative for every
other species scored there and for every species scored on a window of background only. Because
each species is judged on its own (not a softmax over species), a window of wind can have every
confidence low: the model may abstain. A temperature softmax cannot, which is why it is not used.
Which features (``CANDIDATES``) is chosen by cross-validated log loss on the fitting data
(``choose_platt``).

The fitted parameters live in a small JSON file (``save_calibration``/``load_calibration``), one
entry per query mode ("distilled", "cascade"), beside the encoder or the index.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from birdsearch.errors import ConfigError
from birdsearch.files import read_format_json, write_json_atomic

FORMAT = "birdsearch-calibration"
FORMAT_VERSION = 1
FILE_NAME = "calibration.json"


# What a fit may look at, per (window, species) with a finite score. "contrast" is the score minus the
# mean of the window's finite scores: a model whose output for a window of noise is a diffuse
# mixture of species (the cascade's species head) gives every species a high raw score there, but
# no species stands out from the rest. "zscore" is the contrast in units of the window's standard
# deviation: it keeps the standing out when a model's scores of one window differ only slightly.
FEATURES = ("score", "contrast", "zscore")
# Chosen between on validation data (``choose_platt``); ties go to the simpler (earlier) one.
CANDIDATES = (("score",), ("score", "contrast"), ("score", "zscore"))


def window_features(per_window: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """(W, S, F) features of (W, S) window species scores (of (S,) scores: (S, F)); NaN where unscored."""
    s = np.asarray(per_window, dtype=np.float64)
    finite = np.isfinite(s)
    values = np.where(finite, s, np.nan)
    out = []
    for name in names:
        if name == "score":
            out.append(values)
        elif name in ("contrast", "zscore"):
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a window with no finite score: NaN
                centred = values - np.nanmean(values, axis=-1, keepdims=True)
                spread = np.nanstd(values, axis=-1, keepdims=True)
            out.append(centred if name == "contrast" else centred / np.where(spread > 1e-6, spread, np.inf))
        else:
            raise ConfigError(f"calibration feature {name!r}: use some of {', '.join(FEATURES)}")
    return np.stack(out, axis=-1)


@dataclass(frozen=True)
class Platt:
    """``sigmoid(weights . features + bias)`` per (window, species); ``facts``: what it was fit on."""

    weights: tuple[float, ...]
    bias: float
    features: tuple[str, ...] = ("score",)
    facts: dict[str, Any] = field(default_factory=dict, compare=False)

    def __call__(self, per_window: np.ndarray) -> np.ndarray:
        """Confidences in [0, 1] of (W, S) or (S,) window species scores; -inf (not scored) gives 0."""
        return self.apply(window_features(per_window, self.features))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Confidences of precomputed (..., F) features; NaN features (not scored) give 0."""
        z = np.asarray(x, dtype=np.float64) @ np.asarray(self.weights, dtype=np.float64) + self.bias
        return np.where(np.isfinite(z), sigmoid(np.nan_to_num(z)), 0.0)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-z) without overflow warnings for large |z|."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def fit_platt(x: np.ndarray, labels: np.ndarray, features: tuple[str, ...] = ("score",),
              iterations: int = 100) -> Platt:  # fmt: skip
    """Maximum-likelihood weights by Newton's method on (n, F) features (or (n,) scores), Platt's targets.

    Targets are (P + 1) / (P + 2) for positives and 1 / (N + 2) for negatives (Platt 1999), so the
    fit stays finite when the classes separate. Needs at least one example of each class.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    y = np.asarray(labels, dtype=bool).ravel()
    if x.shape[0] != y.size:
        raise ConfigError(f"calibration: {x.shape[0]} scores but {y.size} labels")
    if not np.isfinite(x).all():
        raise ConfigError("calibration: scores must be finite (leave out species a window did not score)")
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        raise ConfigError(
            f"calibration needs positive and negative examples; got {positives} and {negatives}: "
            "give labelled windows of several species (and background-only windows)"
        )
    t = np.where(y, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    design = np.hstack([x, np.ones((x.shape[0], 1))])
    theta = np.zeros(design.shape[1])
    theta[-1] = math.log((positives + 1) / (negatives + 1))
    for _ in range(iterations):
        p = sigmoid(design @ theta)
        w = np.maximum(p * (1 - p), 1e-12)
        hess = design.T @ (design * w[:, None]) + 1e-9 * np.eye(design.shape[1])
        step = np.linalg.solve(hess, design.T @ (p - t))
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    weights = tuple(float(v) for v in theta[:-1])
    return Platt(
        weights, float(theta[-1]), tuple(features), {"examples": int(y.size), "positives": positives}
    )


def log_loss(confidences: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of binary labels."""
    p = np.clip(np.asarray(confidences, dtype=np.float64), 1e-12, 1 - 1e-12)
    y = np.asarray(labels, dtype=bool)
    return float(-np.mean(np.where(y, np.log(p), np.log(1 - p))))


def examples(per_windows: list[np.ndarray], presents: list[list[set[int]]],
             features: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(features (n, F), labels (n,), recording of each (n,)) over recordings' (W, S) window scores."""
    xs, ys, groups = [], [], []
    for g, (per_window, present) in enumerate(zip(per_windows, presents, strict=True)):
        rows, cols, labels = labelled_positions(per_window, present)
        xs.append(window_features(per_window, features)[rows, cols])
        ys.append(labels)
        groups.append(np.full(labels.size, g))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(groups)


def choose_platt(per_windows: list[np.ndarray], presents: list[list[set[int]]], folds: int = 5) -> Platt:
    """The Platt fit over the feature set (``CANDIDATES``) with the lowest cross-validated log loss.

    Folds split by recording, so windows of one recording never sit on both sides. The winner is
    refit on everything; its facts hold every candidate's cross-validated log loss.
    """
    losses = {}
    for names in CANDIDATES:
        x, y, groups = examples(per_windows, presents, names)
        fold = groups % folds
        held = np.zeros(y.size)
        for f in range(folds):
            train = fold != f
            if not (fold == f).any():
                continue
            if y[train].all() or not y[train].any():
                held[fold == f] = y[train].mean()
                continue
            held[fold == f] = fit_platt(x[train], y[train], names).apply(x[fold == f])
        losses[names] = log_loss(held, y)
    best = min(CANDIDATES, key=lambda names: (losses[names], CANDIDATES.index(names)))
    x, y, _ = examples(per_windows, presents, best)
    platt = fit_platt(x, y, best)
    cv = {"+".join(n): round(v, 5) for n, v in losses.items()}
    return Platt(platt.weights, platt.bias, best, {**platt.facts, "cv_log_loss": cv})


def expected_calibration_error(confidences: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE: over ``bins`` equal-width confidence bins, the example-weighted |accuracy - mean confidence|.

    Bins are (lo, hi] except the first, which also holds 0 (as in Guo et al. 2017).
    """
    c = np.asarray(confidences, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if c.size == 0:
        return 0.0
    which = np.clip(np.ceil(c * bins).astype(int) - 1, 0, bins - 1)
    gap = np.abs(
        np.bincount(which, weights=y, minlength=bins) - np.bincount(which, weights=c, minlength=bins)
    )
    return float(gap.sum() / c.size)


def window_examples(per_window: np.ndarray, present: list[set[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) from (W, S) window species scores: each finite score an example.

    ``present[w]`` holds the species rows calling in window ``w`` (empty for background only).
    """
    rows, cols, labels = labelled_positions(per_window, present)
    return per_window[rows, cols].astype(np.float64), labels


def labelled_positions(
    per_window: np.ndarray, present: list[set[int]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(window rows, species columns, labels) of the finite scores of (W, S) ``per_window``."""
    if len(present) != per_window.shape[0]:
        raise ConfigError(f"calibration: {per_window.shape[0]} windows but {len(present)} label sets")
    rows, cols = np.nonzero(np.isfinite(per_window))
    labels = np.array([c in present[r] for r, c in zip(rows, cols, strict=True)], dtype=bool)
    return rows, cols, labels


# -- the file --------------------------------------------------------------------------------------


def save_calibration(path: str | Path, mode: str, platt: Platt) -> Path:
    """Set ``mode``'s entry in the calibration file at ``path`` (other modes kept), atomically."""
    path = Path(path)
    entries = load_calibration(path) if path.is_file() else {}
    entries[mode] = platt
    data = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "modes": {m: {"method": "platt", **describe(p), "facts": p.facts} for m, p in entries.items()},
    }
    write_json_atomic(path, data)
    return path


def load_calibration(path: str | Path) -> dict[str, Platt]:
    """The calibration of each mode in the file at ``path``; ConfigError naming what is wrong."""
    path = Path(path)
    data = read_format_json(path, "calibration", FORMAT, FORMAT_VERSION)
    return {mode: read_entry(path, mode, entry) for mode, entry in (data.get("modes") or {}).items()}


def read_entry(path: Path, mode: str, entry: Any) -> Platt:
    """One mode's fit from the file, checked: features known, one finite weight each, a finite bias."""
    try:
        features = tuple(str(f) for f in entry["features"])
        weights = tuple(float(w) for w in entry["weights"])
        bias = float(entry["bias"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(
            f"{path}: mode {mode!r} needs 'features', numbers 'weights' and a number 'bias'"
        ) from None
    unknown = [f for f in features if f not in FEATURES]
    if entry.get("method", "platt") != "platt" or unknown or len(features) != len(weights) or not features:
        raise ConfigError(
            f"{path}: mode {mode!r} is not a Platt fit over features {FEATURES} (got {features})"
        )
    if not all(math.isfinite(v) for v in (*weights, bias)):
        raise ConfigError(f"{path}: mode {mode!r} has a weight or bias that is not finite")
    return Platt(weights, bias, features, dict(entry.get("facts") or {}))


def describe(platt: Platt) -> dict[str, Any]:
    """The fit as the calibration file and run files record it."""
    return {"features": list(platt.features), "weights": [round(w, 6) for w in platt.weights],
            "bias": round(platt.bias, 6)}  # fmt: skip
