"""Calibrated confidence for window species scores: Platt scaling, expected calibration error, storage.

A window's species score (pooled cosine similarity, ``birdsearch.service.ranking``) is not a
probability: its scale depends on the model, the gallery and the species rule. A Platt fit maps it
to one, per score:

    confidence = sigmoid(a * score + b)

fit by maximum likelihood on labelled windows held out from training, each (window, species) pair
with a finite score an example: positive when that species calls in the window, negative for every
other species scored there and for every species scored on a window of background only. Because
each species is judged on its own (not a softmax over species), a window of wind can have every
confidence low: the model may abstain. A temperature softmax cannot, which is why it is not used.

The fitted parameters live in a small JSON file (``save_calibration``/``load_calibration``), one
entry per query mode ("distilled", "cascade"), beside the encoder or the index.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from birdsearch.errors import ConfigError

FORMAT = "birdsearch-calibration"
FORMAT_VERSION = 1
FILE_NAME = "calibration.json"


@dataclass(frozen=True)
class Platt:
    """``sigmoid(a * score + b)``; ``facts`` records what it was fit on (rule, index, counts, ECE)."""

    a: float
    b: float
    facts: dict[str, Any] = field(default_factory=dict, compare=False)

    def __call__(self, scores: np.ndarray | float) -> np.ndarray:
        """Confidences in [0, 1] for scores of any shape; -inf (a species not scored) gives 0."""
        s = np.asarray(scores, dtype=np.float64)
        z = np.where(np.isfinite(s), self.a * np.where(np.isfinite(s), s, 0.0) + self.b, -np.inf)
        return np.where(np.isfinite(z), sigmoid(z), 0.0)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-z) without overflow warnings for large |z|."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def fit_platt(scores: np.ndarray, labels: np.ndarray, iterations: int = 100) -> Platt:
    """Maximum-likelihood (a, b) by Newton's method, with Platt's smoothed targets.

    Targets are (P + 1) / (P + 2) for positives and 1 / (N + 2) for negatives (Platt 1999), so the
    fit stays finite when the classes separate. Needs at least one example of each class.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ConfigError(f"calibration: {s.size} scores but {y.size} labels")
    if not np.isfinite(s).all():
        raise ConfigError("calibration: scores must be finite (leave out species a window did not score)")
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        raise ConfigError(
            f"calibration needs positive and negative examples; got {positives} and {negatives}: "
            "give labelled windows of several species (and background-only windows)"
        )
    t = np.where(y, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    a, b = 0.0, math.log((positives + 1) / (negatives + 1))
    for _ in range(iterations):
        p = sigmoid(a * s + b)
        w = np.maximum(p * (1 - p), 1e-12)
        grad = np.array([np.dot(p - t, s), np.sum(p - t)])
        hess = np.array([[np.dot(w, s * s), np.dot(w, s)], [np.dot(w, s), np.sum(w)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return Platt(float(a), float(b), {"examples": s.size, "positives": positives})


def expected_calibration_error(confidences: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE: over ``bins`` equal-width confidence bins, the example-weighted |accuracy - mean confidence|.

    Bins are (lo, hi] except the first, which also holds 0 (as in Guo et al. 2017).
    """
    c = np.asarray(confidences, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if c.size == 0:
        return 0.0
    which = np.clip(np.ceil(c * bins).astype(int) - 1, 0, bins - 1)
    gap = np.abs(np.bincount(which, weights=y, minlength=bins) - np.bincount(which, weights=c, minlength=bins))
    return float(gap.sum() / c.size)


def window_examples(per_window: np.ndarray, present: list[set[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) from (W, S) window species scores: each finite score an example.

    ``present[w]`` holds the species rows calling in window ``w`` (empty for background only).
    """
    if len(present) != per_window.shape[0]:
        raise ConfigError(f"calibration: {per_window.shape[0]} windows but {len(present)} label sets")
    rows, cols = np.nonzero(np.isfinite(per_window))
    labels = np.array([c in present[r] for r, c in zip(rows, cols, strict=True)], dtype=bool)
    return per_window[rows, cols].astype(np.float64), labels


# -- the file --------------------------------------------------------------------------------------


def save_calibration(path: str | Path, mode: str, platt: Platt) -> Path:
    """Set ``mode``'s entry in the calibration file at ``path`` (other modes kept), atomically."""
    path = Path(path)
    entries = load_calibration(path) if path.is_file() else {}
    entries[mode] = platt
    data = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "modes": {m: {"method": "platt", "a": p.a, "b": p.b, "facts": p.facts} for m, p in entries.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)
    return path


def load_calibration(path: str | Path) -> dict[str, Platt]:
    """The calibration of each mode in the file at ``path``; ConfigError naming what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"calibration file {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"calibration file {path} is not readable JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a calibration file (format should be {FORMAT!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: calibration format version {data.get('format_version')} is not {FORMAT_VERSION}")
    out = {}
    for mode, entry in (data.get("modes") or {}).items():
        try:
            a, b = float(entry["a"]), float(entry["b"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{path}: mode {mode!r} needs numbers 'a' and 'b'") from None
        if entry.get("method", "platt") != "platt" or not (math.isfinite(a) and math.isfinite(b)):
            raise ConfigError(f"{path}: mode {mode!r} is not a finite Platt fit")
        out[mode] = Platt(a, b, dict(entry.get("facts") or {}))
    return out


def describe(platt: Platt | None) -> dict[str, Any] | None:
    """The calibration as answers and run files report it."""
    return None if platt is None else {"method": "platt", "a": round(platt.a, 6), "b": round(platt.b, 6)}


__all__ = [
    "FILE_NAME",
    "Platt",
    "describe",
    "expected_calibration_error",
    "fit_platt",
    "load_calibration",
    "save_calibration",
    "sigmoid",
    "window_examples",
]
