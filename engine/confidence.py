"""Where the engine finds each mode's calibration, and ``min_conf`` applied to an answer.

A calibration (``birdsearch.model.calibration``; fit by ``birdsearch.engine.calibrate``) is looked up
in ``BIRDSEARCH_CALIBRATION`` (a file with an entry per mode) when set; otherwise in
``<checkpoint>/calibration.json`` for the distilled encoder and ``<index root>/calibration.json`` for
the cascade (which has no encoder folder of its own).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from birdsearch.model.calibration import FILE_NAME, Platt, load_calibration

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
        "'python -m birdsearch.engine.calibrate' and set BIRDSEARCH_CALIBRATION "
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
