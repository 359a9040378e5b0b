"""How unlike the audio a model knows a window is: novelty signals, their reference windows, the gate.

A gallery holds a few hundred species; a recorder hears thousands of other sounds. A window whose
audio is unlike anything the model learned from should say so ("unlike the recordings the model
knows") instead of naming the nearest gallery species. A query mode supplies two things, and every
signal here is a function of them alone, so that adding a mode is providing them:

- each window's features: the audio tower's pooled output (``embed_with_tower`` of the distilled
  encoder and of the student), and the mode's own embedding;
- **reference windows**: labelled recordings the model learned from, their tower features kept
  beside the model (``save_reference``; ``birdsearch distill`` writes its training windows).

The tower's pooled output, not the mode's final embedding, is the space measured in: the
projection and the head that follow it are trained to keep only what names a gallery species and
pull every window towards one, which is what novelty must not lose.

Signals, larger = more novel (``SIGNALS``):

- ``knn``: 1 - the mean cosine similarity of a window to its ``k`` nearest reference windows
  (exact search: a few thousand vectors need no index);
- ``mahalanobis``: the smallest squared Mahalanobis distance to a species' mean reference window,
  with one covariance shared by all species and shrunk towards a multiple of the identity;
- ``max_confidence``: 1 - the window's best calibrated species confidence (no reference: the
  baseline every calibrated mode has);
- ``prompts``: the probability a text tower's zero-shot softmax puts on sounds that are not birds
  ("a recording of rain") against the gallery's species captions (modes with a text tower).

The **gate** (``OpenSet``, one per mode in ``open_set.json`` beside the calibration) is a signal,
its threshold (windows above it are novel) and the ``min_conf`` chosen with it, fitted on
validation windows only (``fit_open_set``).

Reference files (``REFERENCE_FILE`` + ``REFERENCE_CARD`` in the model's folder)::

    novelty_reference.safetensors   "embeddings" (N, H) float16 unit tower features, "labels" (N,) int32
    novelty_reference.json          {"format", "format_version", "sha256" (of the safetensors file),
                                     "species" (label -> scientific name), "windows", "dim",
                                     "space" ("tower"), "window_s", "source", "created", ...}
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from birdsearch.errors import ConfigError
from birdsearch.files import read_format_json, write_json_atomic

log = logging.getLogger(__name__)

REFERENCE_FORMAT = "birdsearch-novelty-reference"
REFERENCE_FILE = "novelty_reference.safetensors"
REFERENCE_CARD = "novelty_reference.json"
OPEN_SET_FORMAT = "birdsearch-open-set"
OPEN_SET_FILE = "open_set.json"
FORMAT_VERSION = 1
# Reference windows kept per species, spread evenly over its recordings: enough for the nearest
# neighbours of any window, few enough that a 5,000-species reference stays a few hundred MB at 768-d.
MAX_REFERENCE_PER_SPECIES = 64


# -- reference windows -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """Labelled windows a model learned from, embedded in the mode's space."""

    embeddings: np.ndarray  # (N, D) float32, unit rows
    labels: np.ndarray  # (N,) int, into ``species``
    species: tuple[str, ...]
    facts: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or len(self.embeddings) != len(self.labels) or not len(self.labels):
            raise ConfigError(f"a novelty reference needs (N, D) embeddings and N labels, N > 0; "
                              f"got {self.embeddings.shape} and {self.labels.shape}")  # fmt: skip

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def build_reference(
    embed: Callable[[np.ndarray], np.ndarray],
    clips: Iterable[tuple[int, Callable[[], np.ndarray]]],
    species: Sequence[str],
    facts: dict[str, Any] | None = None,
    per_species: int = MAX_REFERENCE_PER_SPECIES,
    batch_size: int = 32,
) -> Reference:
    """Embed labelled recordings' windows into a reference, at most ``per_species`` windows a species.

    Streams: a clip is decoded only while its species still has room, and windows are embedded a
    batch at a time, so a large training set needs no more memory than one batch.

    Args:
        embed: (B, T) windows to (B, D) embeddings in the mode's space (rows are normalised here).
        clips: (species label, a function returning the clip's (n, T) windows) pairs. Give them in
            an order that mixes each species' recordings (``spread_order``): a species with more
            windows than ``per_species`` keeps its first ones.
        species: label -> scientific name.
    """
    kept = np.zeros(len(species), dtype=np.int64)
    batch: list[np.ndarray] = []
    labels: list[int] = []
    out: list[np.ndarray] = []
    seen = 0
    for label, load in clips:
        if kept[label] >= per_species:
            continue
        frames = load()
        seen += len(frames)
        for frame in frames[: per_species - kept[label]]:
            batch.append(frame)
            labels.append(label)
            kept[label] += 1
            if len(batch) == batch_size:
                out.append(np.asarray(embed(np.stack(batch)), dtype=np.float32))
                batch = []
    if batch:
        out.append(np.asarray(embed(np.stack(batch)), dtype=np.float32))
    if not out:
        raise ConfigError("a novelty reference needs labelled windows; none were given")
    facts = {**(facts or {}), "windows_seen": seen, "per_species": per_species}
    return Reference(unit_rows(np.concatenate(out)), np.array(labels, dtype=np.int64), tuple(species), facts)


def spread_order(labels: Sequence[int], seed: int = 0) -> list[int]:
    """Indices of ``labels`` in a seeded random order: a capped species keeps windows of many recordings."""
    return [int(i) for i in np.random.default_rng(seed).permutation(len(labels))]


def save_reference(reference: Reference, folder: str | Path) -> Path:
    """Write ``REFERENCE_FILE`` and its card into ``folder``, each atomically, the card last."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / REFERENCE_FILE
    tmp = weights.with_name(f".{weights.name}.{os.getpid()}")
    embeddings = np.ascontiguousarray(reference.embeddings.astype(np.float16))
    save_file({"embeddings": embeddings, "labels": reference.labels.astype(np.int32)}, str(tmp),
              metadata={"format": REFERENCE_FORMAT})  # fmt: skip
    os.replace(tmp, weights)
    card = {
        "format": REFERENCE_FORMAT, "format_version": FORMAT_VERSION, "sha256": sha256(weights),
        "species": list(reference.species), "windows": len(reference.labels), "dim": reference.dim,
        "created": datetime.now(UTC).isoformat(timespec="seconds"), **reference.facts,
    }  # fmt: skip
    write_json_atomic(folder / REFERENCE_CARD, card)
    return weights


def load_reference(folder: str | Path) -> Reference | None:
    """The reference beside a model in ``folder``; None (with a warning) when it has none or a damaged one.

    A model without a reference still serves, as before: without the signals that need one.
    """
    folder = Path(folder)
    weights, card_path = folder / REFERENCE_FILE, folder / REFERENCE_CARD
    if not weights.is_file() or not card_path.is_file():
        log.warning("%s has no novelty reference (%s): windows unlike the training audio are not "
                    "recognised; fit one with 'python -m birdsearch.service.calibrate --reference ...'",
                    folder, REFERENCE_FILE)  # fmt: skip
        return None
    try:
        card = read_format_json(card_path, "novelty reference", REFERENCE_FORMAT, FORMAT_VERSION)
        if sha256(weights) != card["sha256"]:
            raise ValueError(f"{REFERENCE_FILE} does not match the checksum in {REFERENCE_CARD}")
        from safetensors.numpy import load_file

        tensors = load_file(str(weights))
        reference = Reference(unit_rows(tensors["embeddings"]), tensors["labels"].astype(np.int64),
                              tuple(card["species"]), card)  # fmt: skip
    except (OSError, ValueError, KeyError, ConfigError) as e:
        log.warning("the novelty reference in %s cannot be used (%s): windows unlike the training "
                    "audio are not recognised", folder, e)  # fmt: skip
        return None
    return reference


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- signals ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """What the signals read of a batch of W windows (None where the mode or the call has none)."""

    tower: np.ndarray | None = None  # (W, H) the audio tower's pooled features: the reference's space
    embeddings: np.ndarray | None = None  # (W, D) the mode's own embeddings (the prompts' space)
    confidences: np.ndarray | None = None  # (W, S) calibrated species confidences

    def rows(self, index: np.ndarray) -> Evidence:
        """The evidence of some windows only."""
        pick = lambda x: None if x is None else x[index]  # noqa: E731
        return Evidence(pick(self.tower), pick(self.embeddings), pick(self.confidences))


class Signal(Protocol):
    """Evidence of W windows to (W,) novelty, larger = more novel."""

    name: str

    def __call__(self, evidence: Evidence) -> np.ndarray: ...


def tower_of(evidence: Evidence, signal: str) -> np.ndarray:
    if evidence.tower is None:
        raise ConfigError(f"novelty signal {signal!r} needs the audio tower's features of each window")
    return unit_rows(evidence.tower)


class KnnNovelty:
    """1 - mean cosine similarity to the ``k`` nearest reference windows."""

    name = "knn"

    def __init__(self, reference: Reference, k: int = 5):
        if k < 1:
            raise ConfigError(f"knn novelty: k={k} must be at least 1")
        self.vectors = reference.embeddings
        self.k = min(int(k), len(self.vectors))

    def __call__(self, evidence: Evidence) -> np.ndarray:
        similarity = tower_of(evidence, self.name) @ self.vectors.T  # (W, N)
        nearest = -np.partition(-similarity, self.k - 1, axis=1)[:, : self.k]
        return 1.0 - nearest.mean(axis=1)


class MahalanobisNovelty:
    """The smallest squared Mahalanobis distance to a species' mean, one shrunk covariance for all.

    The covariance of the windows around their species' means, shrunk towards ``trace / D`` times the
    identity by ``shrinkage`` (a reference has fewer windows than a 768-d space has directions).
    """

    name = "mahalanobis"

    def __init__(self, reference: Reference, shrinkage: float = 0.1):
        if not 0.0 <= shrinkage <= 1.0:
            raise ConfigError(f"mahalanobis novelty: shrinkage={shrinkage} must be in [0, 1]")
        x, labels = reference.embeddings.astype(np.float64), reference.labels
        classes = np.unique(labels)
        means = np.stack([x[labels == c].mean(axis=0) for c in classes])
        centred = x - means[np.searchsorted(classes, labels)]
        covariance = centred.T @ centred / max(1, len(x) - len(classes))
        dim = covariance.shape[0]
        covariance = (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / dim * np.eye(dim)
        # Whitening: with precision = W W^T, distances are Euclidean after multiplying by W.
        self.whiten = np.linalg.cholesky(np.linalg.inv(covariance + 1e-9 * np.eye(dim)))
        self.means = means @ self.whiten

    def __call__(self, evidence: Evidence) -> np.ndarray:
        z = tower_of(evidence, self.name).astype(np.float64) @ self.whiten
        squared = (z**2).sum(1, keepdims=True) - 2 * z @ self.means.T + (self.means**2).sum(1)
        return np.maximum(squared.min(axis=1), 0.0)


class MaxConfidenceNovelty:
    """1 - the best calibrated species confidence of the window: the baseline that needs no reference."""

    name = "max_confidence"

    def __call__(self, evidence: Evidence) -> np.ndarray:
        if evidence.confidences is None:
            raise ConfigError("max_confidence novelty needs calibrated confidences: fit a calibration first")
        return 1.0 - np.asarray(evidence.confidences, dtype=np.float64).max(axis=1, initial=0.0)


# Prompts for sounds that are not birds, for modes whose space has a text tower (the student's).
NON_BIRD_PROMPTS = (
    "a recording of rain", "a recording of wind", "the sound of insects", "a chorus of frogs",
    "a car engine", "an airplane flying over", "people talking", "a dog barking", "silence",
    "background noise",
)  # fmt: skip


class PromptNovelty:
    """The zero-shot probability of a non-bird prompt against the gallery's species captions."""

    name = "prompts"

    def __init__(self, prompt_vectors: np.ndarray, species_vectors: np.ndarray, logit_scale: float):
        self.classes = unit_rows(np.concatenate([prompt_vectors, species_vectors]))
        self.prompts = len(prompt_vectors)
        self.scale = float(logit_scale)

    def __call__(self, evidence: Evidence) -> np.ndarray:
        if evidence.embeddings is None:
            raise ConfigError("prompt novelty needs the student's audio embedding of each window")
        logits = self.scale * (unit_rows(evidence.embeddings) @ self.classes.T).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs[:, : self.prompts].sum(1) / probs.sum(1)


SIGNALS = ("knn", "mahalanobis", "max_confidence", "prompts")
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {"knn": {"k": 5}, "mahalanobis": {"shrinkage": 0.1}}
# What the gate's fit chooses among on validation windows (those a mode can have), by name. Without
# outside windows to choose by, the first the mode has: the toy world's choice (BENCHMARKS.md, Open set).
CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    "mahalanobis": ("mahalanobis", {"shrinkage": 0.1}),
    "knn:1": ("knn", {"k": 1}), "knn:5": ("knn", {"k": 5}), "knn:20": ("knn", {"k": 20}),
    "max_confidence": ("max_confidence", {}), "prompts": ("prompts", {}),
}  # fmt: skip


def make_signal(name: str, params: dict[str, Any] | None = None, reference: Reference | None = None,
                prompts: PromptNovelty | None = None) -> Signal:  # fmt: skip
    """The signal ``name`` with ``params``; ConfigError when what it needs is missing."""
    params = {**DEFAULT_PARAMS.get(name, {}), **(params or {})}
    if name in ("knn", "mahalanobis"):
        if reference is None:
            raise ConfigError(
                f"novelty signal {name!r} needs reference windows beside the model ({REFERENCE_FILE})"
            )
        return KnnNovelty(reference, **params) if name == "knn" else MahalanobisNovelty(reference, **params)
    if name == "max_confidence":
        return MaxConfidenceNovelty()
    if name == "prompts":
        if prompts is None:
            raise ConfigError(
                "novelty signal 'prompts' needs a mode with a text tower (the cascade's student)"
            )
        return prompts
    raise ConfigError(f"unknown novelty signal {name!r}: use one of {', '.join(SIGNALS)}")


def available_candidates(reference: Reference | None, prompts: PromptNovelty | None) -> dict[str, Signal]:
    """The ``CANDIDATES`` a mode can have: reference signals with a reference, prompts with a text tower."""
    out = {}
    for name, (signal, params) in CANDIDATES.items():
        try:
            out[name] = make_signal(signal, params, reference, prompts)
        except ConfigError:
            continue
    return out


# -- fitting on validation -------------------------------------------------------------------------

IN_GALLERY, BACKGROUND = "in_gallery", "background"  # validation groups; any other group is outside


def novelty_threshold(in_gallery: np.ndarray, keep: float) -> float:
    """The novelty above which a window is novel, so that ``keep`` of in-gallery validation windows are not."""
    values = np.asarray(in_gallery, dtype=np.float64)
    if not 0.0 < keep < 1.0:
        raise ConfigError(
            f"keep={keep} must be between 0 and 1 (the share of known windows not called novel)"
        )
    if not values.size:
        raise ConfigError("the novelty threshold needs in-gallery validation windows")
    return float(np.quantile(values, keep, method="higher"))


def min_conf_for_precision(confidences: np.ndarray, correct: np.ndarray, target: float) -> float | None:
    """The smallest threshold whose detections (confidence at least it) reach precision ``target``.

    ``confidences`` and ``correct``: one entry per candidate detection on validation windows. None
    when no threshold reaches the target.
    """
    c = np.asarray(confidences, dtype=np.float64)
    y = np.asarray(correct, dtype=bool)
    order = np.argsort(-c, kind="stable")
    c, y = c[order], y[order]
    precision = np.cumsum(y) / np.arange(1, len(y) + 1)
    # A threshold t keeps every detection with confidence >= t: the last of a run of ties decides.
    last_of_tie = np.append(c[1:] != c[:-1], True)
    reaching = np.flatnonzero(last_of_tie & (precision >= target))
    return float(c[reaching[-1]]) if reaching.size else None


def candidate_detections(confidences: np.ndarray, present: Sequence[set[int]], novel: np.ndarray,
                         species_k: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(confidence, right) of each window's ``species_k`` best species, windows the gate let through.

    A detection at threshold t is one of these with confidence >= t (the rule ``analyze`` applies).
    """
    top = np.argsort(-confidences, axis=1, kind="stable")[:, :species_k]
    keep = ~np.asarray(novel, dtype=bool)
    rows = np.repeat(np.flatnonzero(keep), top.shape[1])
    cols = top[keep].ravel()
    right = np.fromiter((int(c) in present[int(r)] for r, c in zip(rows, cols, strict=True)), bool, len(rows))
    return confidences[rows, cols], right


def auroc_by_group(values: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """AUROC of novelty, in-gallery windows (negatives) against each outside group's windows (positives)."""
    from birdsearch.model.metrics import auroc

    inside = groups == IN_GALLERY
    outside = [g for g in dict.fromkeys(groups.tolist()) if g not in (IN_GALLERY, BACKGROUND)]
    return {g: auroc(values[inside | (groups == g)], groups[inside | (groups == g)] == g) for g in outside}


def fit_open_set(
    evidence: Evidence,
    groups: np.ndarray,
    present: Sequence[set[int]],
    candidates: dict[str, Signal],
    keep: float = 0.95,
    precision: float = 0.7,
    species_k: int = 5,
) -> OpenSet:
    """A mode's gate and ``min_conf``, fitted on validation windows only.

    1. Each candidate signal's AUROC, in-gallery windows against each outside group's; the best mean
       wins (without outside windows: the first candidate the mode has, in ``CANDIDATES`` order).
    2. Its threshold: ``keep`` of the in-gallery windows are not novel (``novelty_threshold``).
    3. ``min_conf``: the smallest threshold at which the detections of every window the gate lets
       through reach ``precision`` (``min_conf_for_precision``; None when none does).

    Args:
        evidence: every validation window's features and calibrated confidences.
        groups: (W,) each window's group: "in_gallery", "background" or an outside group's name.
        present: the gallery species rows calling in each window (empty for background and outside).
        candidates: the signals to choose among (``available_candidates``).
    """
    if not candidates:
        raise ConfigError("no novelty signal to fit: give the model a reference or a calibration")
    if evidence.confidences is None:
        raise ConfigError("fitting the gate needs the windows' calibrated confidences")
    groups = np.asarray(groups)
    values = {name: signal(evidence) for name, signal in candidates.items()}
    aurocs = {name: auroc_by_group(v, groups) for name, v in values.items()}
    means = {name: float(np.mean(list(a.values()))) if a else float("nan") for name, a in aurocs.items()}
    scored = [name for name in candidates if math.isfinite(means[name])]
    best = max(scored, key=lambda name: means[name]) if scored else next(iter(candidates))
    threshold = novelty_threshold(values[best][groups == IN_GALLERY], keep)
    novel = values[best] > threshold
    confidence, right = candidate_detections(evidence.confidences, present, novel, species_k)
    min_conf = min_conf_for_precision(confidence, right, precision)
    signal, params = CANDIDATES[best]
    facts = {
        "chosen": best, "keep": keep, "target_precision": precision, "species_k": species_k,
        "validation_auroc": {n: {g: round(v, 4) for g, v in a.items()} for n, a in aurocs.items()},
        "validation_mean_auroc": {n: round(v, 4) for n, v in means.items()},
        "validation_windows": {g: int((groups == g).sum()) for g in dict.fromkeys(groups.tolist())},
        "validation_novel": {g: round(float(novel[groups == g].mean()), 4) for g in dict.fromkeys(groups.tolist())},
    }  # fmt: skip
    if min_conf is not None:
        kept = confidence >= min_conf
        facts["validation_precision"] = round(float(right[kept].mean()), 4)
        facts["validation_detections"] = int(kept.sum())
    return OpenSet(signal, threshold, params, min_conf, facts)


# -- the gate: open_set.json -----------------------------------------------------------------------


@dataclass(frozen=True)
class OpenSet:
    """A mode's open-set answer: the novelty signal and threshold, and the ``min_conf`` chosen with them."""

    signal: str  # one of SIGNALS
    threshold: float  # a window whose novelty is above it is novel
    params: dict[str, Any] = field(default_factory=dict)  # the signal's settings (k, shrinkage)
    min_conf: float | None = None  # the default confidence threshold chosen on validation
    facts: dict[str, Any] = field(default_factory=dict, compare=False)  # what it was fit on, figures

    def novel(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64) > self.threshold


def save_open_set(path: str | Path, mode: str, entry: OpenSet) -> Path:
    """Set ``mode``'s entry in the open-set file at ``path`` (other modes kept), atomically."""
    path = Path(path)
    entries = load_open_set(path) if path.is_file() else {}
    entries[mode] = entry
    data = {
        "format": OPEN_SET_FORMAT,
        "format_version": FORMAT_VERSION,
        "modes": {
            m: {
                "signal": e.signal,
                "params": e.params,
                "threshold": e.threshold,
                "min_conf": e.min_conf,
                "facts": e.facts,
            }
            for m, e in entries.items()
        },  # fmt: skip
    }
    write_json_atomic(path, data)
    return path


def load_open_set(path: str | Path) -> dict[str, OpenSet]:
    """Each mode's open-set entry in the file at ``path``; ConfigError naming what is wrong."""
    path = Path(path)
    data = read_format_json(path, "open-set", OPEN_SET_FORMAT, FORMAT_VERSION)
    return {mode: read_open_set_entry(path, mode, entry) for mode, entry in (data.get("modes") or {}).items()}


def read_open_set_entry(path: Path, mode: str, entry: Any) -> OpenSet:
    try:
        signal, threshold = str(entry["signal"]), float(entry["threshold"])
        min_conf = None if entry.get("min_conf") is None else float(entry["min_conf"])
        params = dict(entry.get("params") or {})
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{path}: mode {mode!r} needs a 'signal' name and a number 'threshold'") from None
    if signal not in SIGNALS:
        raise ConfigError(
            f"{path}: mode {mode!r} has unknown novelty signal {signal!r} (use one of {', '.join(SIGNALS)})"
        )
    if not math.isfinite(threshold) or (min_conf is not None and not 0.0 <= min_conf <= 1.0):
        raise ConfigError(f"{path}: mode {mode!r} needs a finite threshold and a min_conf in [0, 1]")
    return OpenSet(signal, threshold, params, min_conf, dict(entry.get("facts") or {}))
