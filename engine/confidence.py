"""Where the engine finds each mode's calibration, and ``min_conf`` applied to an answer.

A calibration (``birdsearch.model.calibration``; fit by ``birdsearch.engine.calibrate``) is looked up
in ``BIRDSEARCH_CALIBRATION`` (a file with an entry per mode) when set; otherwise in
``<checkpoint>/calibration.json`` for the modes of a distilled encoder (distilled, classifier, hybrid:
an entry each) and ``<index root>/calibration.json`` for the cascade (which has no encoder folder of
its own).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from birdsearch.engine.config import ENCODER_MODES
from birdsearch.model.calibration import FILE_NAME, Platt, load_calibration

log = logging.getLogger(__name__)


def mode_folder(mode: str, checkpoint: str, index_root: Path) -> Path | None:
    """The folder of a mode's own files: the distilled encoder's for its modes (distilled, classifier,
    hybrid), or the index root for the cascade (which has no folder of its own); None for an encoder's
    mode without an encoder."""
    if mode in ENCODER_MODES:
        return Path(checkpoint) if checkpoint else None
    return Path(index_root)


def calibration_place(mode: str, calibration: str, checkpoint: str, index_root: Path) -> Path | None:
    """Where ``mode``'s calibration file is (see the module's docstring); None when it cannot be anywhere."""
    if calibration:
        return Path(calibration)
    folder = mode_folder(mode, checkpoint, index_root)
    return folder / FILE_NAME if folder is not None else None


def calibration_for(mode: str, calibration: str, checkpoint: str, index_root: Path) -> Platt | None:
    """The calibration of ``mode`` (see the module's docstring for where it is looked up); None without one.

    Without one, answers carry raw scores only and ``min_conf`` is refused with the fix.
    """
    place = calibration_place(mode, calibration, checkpoint, index_root)
    if place is None:
        return None
    found = load_calibration(place).get(mode) if place.is_file() or calibration else None
    if found is None:
        log.info("no calibration for mode %s in %s: answers carry raw scores only", mode, place)
    return found


def no_calibration(mode: str) -> str:
    """What to do when ``min_conf`` is asked of a mode without a calibration."""
    return (
        f"min_conf needs a calibration for mode {mode!r} and this server has none: fit one with "
        "'python -m birdsearch.engine.calibrate' and set BIRDSEARCH_CALIBRATION "
        f"or put {FILE_NAME} beside the encoder (distilled, classifier, hybrid) or in the index root (cascade)"
    )


def apply_min_conf(species: list[Any], images: list[Any], timeline: list[Any], min_conf: float | None,
                   include_abstained: bool = False) -> tuple[list[Any], list[Any], list[Any], str | None, str | None]:  # fmt: skip
    """Keep the species (of the ranking and of each window) that are detected, and say what abstained.

    A window abstains when the gate called it novel (``reason`` "novel", set by the timeline) or when no
    species reaches ``min_conf`` ("below_min_conf"); a species of the ranking is detected when its
    confidence (its best in the windows that are not novel) reaches ``min_conf``. Without a threshold
    every species of a window that is not novel is detected. Photos are kept of detected species only.
    With ``include_abstained`` nothing is dropped: what is not detected is marked ``detected: false``.

    Returns (species, images, timeline, reason, message): ``reason`` is None when something was
    detected, "novel" when every window was novel, else "below_min_conf"; ``message`` says it in words.
    """
    if min_conf is None and not any(window.abstained for window in timeline):
        return species, images, timeline, None, None  # nothing to apply: the answer as scored
    windows, novel = [], 0
    for window in timeline:
        if window.abstained:  # the gate's
            heard = []
            novel += 1
        elif min_conf is None:
            heard = window.species
        else:
            heard = [s for s in window.species if s.confidence is not None and s.confidence >= min_conf]
        names = {s.species for s in heard}
        listed = [s.model_copy(update={"detected": s.species in names}) for s in window.species]
        reason = window.reason or (None if heard else "below_min_conf")
        windows.append(window.model_copy(update={"species": listed if include_abstained else heard,
                                                 "abstained": not heard, "reason": reason}))  # fmt: skip
    everywhere_novel = bool(timeline) and novel == len(timeline)
    if everywhere_novel:
        detected = []
    elif min_conf is None:
        detected = species
    else:
        detected = [hit for hit in species if hit.confidence is not None and hit.confidence >= min_conf]
    names = {hit.species for hit in detected}
    if detected or not all(w.abstained for w in windows):
        reason = message = None
    elif everywhere_novel:
        reason = "novel"
        message = "the recording is unlike the recordings the model knows: not in this gallery"
    else:
        reason = "below_min_conf"
        message = (
            f"no species reached the confidence threshold of {min_conf:g}" if min_conf is not None else None
        )
        if novel:
            message = (
                f"{message}; {novel} of {len(timeline)} windows are unlike the recordings the model knows"
            )
    if include_abstained:
        species = [hit.model_copy(update={"detected": hit.species in names}) for hit in species]
        return species, images, windows, reason, message
    return detected, [image for image in images if image.species in names], windows, reason, message
