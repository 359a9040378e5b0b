"""The engine's per-window result: one species heard in one window, with the photo that shows it best.

``window_detections`` is the one place detections are made: from a recording's scored windows
(``scoring.WindowScores``), each window's best ``species_k`` species, best first, each with its
confidence and its best photo among that window's candidates. Every door shows the same detections:

- ``POST /query`` and the Python API's ``query``: the answer's timeline, one ``TimelineWindow`` per
  window, its species ``as_window_species`` views of the window's detections;
- ``analyze`` in-process, on Ray, and the Python API's ``analyze``: a ``RecordingResult`` per
  recording, its detections those whose confidence reaches ``min_conf``;
- ``analyze --url``: the server's timeline read back into detections (``from_timeline``).

A detection's ``confidence`` is the calibrated confidence of its species in its window, or its raw
score when the mode has no calibration (the timeline then shows no confidence); a threshold
compares the value the detection carries, so every door keeps the same ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from birdsearch.engine import ranking
from birdsearch.engine.schemas import TimelineWindow, WindowSpecies
from birdsearch.engine.scoring import WindowScores, image_records, window_photo

if TYPE_CHECKING:
    from birdsearch.engine.index_state import ServedIndex

DIGITS = 6  # scores and confidences as the answers give them
TIME_DIGITS = 3  # window times, milliseconds


@dataclass(frozen=True)
class Detection:
    """One species heard in one window of one recording, with the photo that shows it best."""

    start_s: float  # window start in the recording, seconds
    end_s: float  # window end (the recording's end for a padded short recording)
    scientific: str
    common: str
    # calibrated confidence of the species in the window (its raw score without a calibration)
    confidence: float
    photo_id: int  # image id in the index version that answered
    photo_score: float  # that photo's score for the window
    photo_license: str = ""
    photo_attribution: str = ""
    photo_hash: str = ""  # the photo's content hash: its id in any later index version
    score: float | None = None  # the window's pooled cosine species score (None in results from before)
    species_code: str = ""  # the species' eBird code where the index has it (BirdNET's Species Code)


@dataclass(frozen=True)
class RecordingResult:
    """Everything analysed in one recording."""

    path: str  # the recording, as found
    duration_s: float
    source_rate: int  # Hz before resampling (bounds the Raven frequency box)
    detections: list[Detection] = field(default_factory=list)
    low_hz: float = 0.0  # frequency band the model hears
    high_hz: float = 14_000.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RecordingResult:
        detections = [Detection(**d) for d in data.get("detections", [])]
        return cls(**{**data, "detections": detections})


def window_detections(
    served: ServedIndex,
    scored: WindowScores,
    starts_s: np.ndarray,
    window_s: float,
    duration_s: float,
    species_k: int,
    min_conf: float | None = None,
    skip_novel: bool = False,
) -> list[list[Detection]]:
    """Each window's detections: its ``species_k`` best species (best first) that reach ``min_conf``.

    Args:
        served: the index version the windows were searched in.
        scored: the recording's scored windows (``scoring.score_windows``).
        starts_s: (W,) window starts, seconds.
        window_s: window length, seconds; the last window ends at ``duration_s`` at the latest.
        duration_s: the recording's length, seconds.
        species_k: species per window at most.
        min_conf: keep species whose confidence (raw score without a calibration) is at least this;
            None keeps them all.
        skip_novel: no detection in a window the mode's gate calls novel (``scored.novel``).
    """
    chosen: list[list[tuple[int, float, int, float]]] = []  # per window: (row, level, photo id, photo score)
    for w in range(len(starts_s)):
        kept = []
        if skip_novel and scored.is_novel(w):
            chosen.append(kept)
            continue
        for row in ranking.top_species(scored.species.per_window[w], species_k):
            level = round(scored.level(w, int(row)), DIGITS)
            if min_conf is not None and level < min_conf:
                continue
            photo, photo_score = window_photo(served, scored.scores, scored.ids, w, int(row))
            kept.append((int(row), level, photo, photo_score))
        chosen.append(kept)
    photos = image_records(served, sorted({photo for kept in chosen for _, _, photo, _ in kept}))
    out = []
    for w, kept in enumerate(chosen):
        start = float(starts_s[w])
        end = min(start + window_s, duration_s)
        out.append([
            detection(served.species[row], photos[photo], start, end, level, photo_score,
                      float(scored.species.per_window[w, row]))
            for row, level, photo, photo_score in kept
        ])  # fmt: skip
    return out


def detection(species: Any, photo: Any, start: float, end: float, level: float, photo_score: float,
              score: float) -> Detection:  # fmt: skip
    """A detection of ``species`` (a SpeciesRecord) shown by ``photo`` (an ImageRecord)."""
    return Detection(
        round(start, TIME_DIGITS), round(end, TIME_DIGITS), species.scientific, species.common, level, photo.id,
        round(photo_score, DIGITS), photo.license, photo.attribution, photo.content_hash, round(score, DIGITS),
        species.code,
    )  # fmt: skip


def as_window_species(d: Detection, calibrated: bool) -> WindowSpecies:
    """A detection as the answer's timeline lists it (no confidence without a calibration)."""
    return WindowSpecies(
        species=d.scientific, common_name=d.common, score=d.score, confidence=d.confidence if calibrated else None,
        image_id=d.photo_id, image_score=d.photo_score, image_license=d.photo_license,
        image_attribution=d.photo_attribution, image_hash=d.photo_hash, species_code=d.species_code,
    )  # fmt: skip


def as_timeline(windows: list[list[Detection]], starts_s: np.ndarray, window_s: float, duration_s: float,
                calibrated: bool, scored: WindowScores | None = None) -> list[TimelineWindow]:  # fmt: skip
    """Each window's time span and its detections, as the answer's timeline; a window the gate calls novel
    (``scored.novel``) abstains with that reason, its species kept for ``confidence.apply_min_conf``."""
    timeline = []
    for w, detections in enumerate(windows):
        start = float(starts_s[w])
        novel = scored is not None and scored.is_novel(w)
        novelty = (
            None if scored is None or scored.novelty is None else round(float(scored.novelty[w]), DIGITS)
        )
        timeline.append(TimelineWindow(
            index=w, start_s=round(start, TIME_DIGITS), end_s=round(min(start + window_s, duration_s), TIME_DIGITS),
            species=[as_window_species(d, calibrated) for d in detections], novelty=novelty,
            abstained=novel, reason="novel" if novel else None,
        ))  # fmt: skip
    return timeline


def from_timeline(timeline: list[dict[str, Any]]) -> list[list[Detection]]:
    """An answer's timeline (as JSON) back into each window's detections.

    Raises KeyError naming what is missing when the answer lacks the detections' photos.
    """
    windows = []
    for window in map(TimelineWindow.model_validate, timeline):
        detections = []
        for hit in window.species:
            if hit.image_id is None or hit.image_score is None:
                raise KeyError("the timeline's photos (image_id)")
            detections.append(Detection(
                window.start_s, window.end_s, hit.species, hit.common_name,
                hit.confidence if hit.confidence is not None else hit.score, hit.image_id, hit.image_score,
                hit.image_license, hit.image_attribution, hit.image_hash, hit.score, hit.species_code,
            ))  # fmt: skip
        windows.append(detections)
    return windows


def confident(windows: list[list[Detection]], min_conf: float) -> list[Detection]:
    """The detections of every window whose confidence reaches ``min_conf``, in window order."""
    return [d for detections in windows for d in detections if d.confidence >= min_conf]
