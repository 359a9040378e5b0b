"""Fit, find and apply the calibration of a query mode's window species scores.

A window's species score depends on the model, the gallery and the species rule, so the Platt fit
(``birdsearch.model.calibration``) is made through the service's own path: labelled recordings held
out from training (the distillation's validation split) and background-only recordings are decoded,
windowed, embedded (the cascade's species head included), searched in the served index and pooled by
the species rule exactly as ``POST /query`` and ``analyze`` do.

Where the service finds it (``calibration_for``): ``BIRDSEARCH_CALIBRATION`` (a calibration file with
an entry per mode) when set; otherwise ``<checkpoint>/calibration.json`` for the distilled encoder
and ``<index root>/calibration.json`` for the cascade (which has no encoder folder of its own).

    engine = load_engine(AnalyzeConfig(inputs=[], out=Path("."), index_root=root, checkpoint=enc))
    platt = fit_engine(engine, [(path, "Turdus migratorius"), ..., (wind_path, None)])
    save_calibration(Path(enc) / "calibration.json", "distilled", platt)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from birdsearch.errors import ConfigError
from birdsearch.model.calibration import (
    FILE_NAME,
    Platt,
    choose_platt,
    describe,
    examples,
    expected_calibration_error,
    load_calibration,
)

log = logging.getLogger(__name__)


def calibration_for(mode: str, calibration: str, checkpoint: str, index_root: Path) -> Platt | None:
    """The calibration of ``mode`` (see the module's docstring for where it is looked up); None without one.

    Without one, answers carry raw scores only and ``min_conf`` is refused with the fix.
    """
    if calibration:
        place = Path(calibration)
    elif mode == "distilled":
        if not checkpoint:
            return None
        place = Path(checkpoint) / FILE_NAME
    else:
        place = Path(index_root) / FILE_NAME
    found = load_calibration(place).get(mode) if place.is_file() or calibration else None
    if found is None:
        log.info("no calibration for mode %s in %s: answers carry raw scores only", mode, place)
    return found


def no_calibration(mode: str) -> str:
    """What to do when ``min_conf`` is asked of a mode without a calibration."""
    return (
        f"min_conf needs a calibration for mode {mode!r} and this server has none: fit one with "
        "birdsearch.service.calibrate.fit_engine (bench/calibration.py shows how) and set BIRDSEARCH_CALIBRATION "
        f"or put {FILE_NAME} beside the encoder (distilled) or in the index root (cascade)"
    )


def apply_min_conf(species: list[Any], images: list[Any], timeline: list[Any],
                   min_conf: float | None) -> tuple[list[Any], list[Any], list[Any], bool]:  # fmt: skip
    """Keep the species (of the ranking and of each window) whose confidence reaches ``min_conf``.

    Returns (species, images, timeline, abstained). Photos are kept only of species kept in the
    ranking; a window left with no species is marked ``abstained``; the recording abstains when
    nothing is left anywhere. Without a threshold everything is kept.
    """
    if min_conf is None:
        return species, images, timeline, False
    kept = [hit for hit in species if hit.confidence is not None and hit.confidence >= min_conf]
    names = {hit.species for hit in kept}
    windows = []
    for window in timeline:
        heard = [s for s in window.species if s.confidence is not None and s.confidence >= min_conf]
        windows.append(window.model_copy(update={"species": heard, "abstained": not heard}))
    abstained = not kept and all(w.abstained for w in windows)
    return kept, [image for image in images if image.species in names], windows, abstained


def window_scores(engine: Any, path: str | Path, rule: str, candidates: int = 200,
                  window_s: float | None = None, hop_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(W, S) species scores of one recording's windows and their (W,) start times, as ``analyze`` scores them."""
    from birdsearch.model import audio
    from birdsearch.service import answer, ranking
    from birdsearch.service.analyze.inputs import Recording
    from birdsearch.service.analyze.pipeline import read_windows

    fe = engine.front_end
    window_s = window_s or fe.window_s
    decoded = read_windows(Recording(Path(path), Path(path).name), fe.sample_rate, window_s, hop_s or window_s,
                           fe.window_samples, audio.AudioLimits())  # fmt: skip
    windows = np.concatenate(decoded.parts)
    if windows.shape[1] != fe.window_samples:
        windows = np.stack([audio.repeat_pad(row, fe.window_samples) for row in windows])
    vectors = np.concatenate([engine.vectors(engine.embedder(windows[i : i + 8])) for i in range(0, len(windows), 8)])
    served = engine.served
    scores, ids, _ = answer.search(served, vectors, 1, engine.allowed, candidates)
    per_window = ranking.species_scores(scores, ids, served.image_species, len(served.species), rule).per_window
    return per_window, decoded.starts_s


def labelled_windows(engine: Any, clips: Sequence[tuple[str | Path, str | None]], rule: str,
                     candidates: int = 200) -> tuple[list[np.ndarray], list[list[set[int]]]]:  # fmt: skip
    """Each clip's (W, S) window scores and, per window, the species rows calling in it.

    A clip is (path, the species calling throughout it, or None for background only).
    """
    rows = {record.scientific: i for i, record in enumerate(engine.served.species)}
    per_windows, presents = [], []
    for path, species in clips:
        if species is not None and species not in rows:
            raise ConfigError(f"calibration clip {path}: species {species!r} is not in index {engine.served.name}")
        per_window, _ = window_scores(engine, path, rule, candidates)
        per_windows.append(per_window)
        presents.append([set() if species is None else {rows[species]} for _ in range(len(per_window))])
    return per_windows, presents


def fit_engine(engine: Any, clips: Sequence[tuple[str | Path, str | None]], rule: str,
               candidates: int = 200) -> Platt:  # fmt: skip
    """``engine``'s calibration from labelled and background-only ``clips`` (features chosen by cross-validation)."""
    per_windows, presents = labelled_windows(engine, clips, rule, candidates)
    platt = choose_platt(per_windows, presents)
    x, labels, _ = examples(per_windows, presents, platt.features)
    facts = {
        **platt.facts,
        "clips": len(clips),
        "background_clips": sum(species is None for _, species in clips),
        "species_rule": rule,
        "candidates_per_window": candidates,
        "index": engine.served.name,
        "model": engine.embedder.facts.id,
        "ece_fit": round(expected_calibration_error(platt.apply(x), labels), 5),
    }
    log.info("calibration of %s on %d scores: %s (ECE %.4f on the fitting data)",
             engine.embedder.mode, labels.size, describe(platt), facts["ece_fit"])  # fmt: skip
    return Platt(platt.weights, platt.bias, platt.features, facts)
