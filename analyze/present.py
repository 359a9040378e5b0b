"""How a run shows each recording's detections: merged as BirdNET merges them, named in the user's
language, its path as given.

None of it changes what the engine detected, so a recording analysed earlier with the same
detection settings is shown again from its state file, without the model:

- ``--merge-consecutive N``: BirdNET-Analyzer's merging of a species' consecutive detections, whose
  windows touch or overlap, into one, at most N windows a merge (0 or 1: no merging). The merged
  detection spans its first window's start to its last window's end; its confidence is the mean of
  its best three (as BirdNET's); its photo, scores and code are those of its most confident window.
- ``--locale``: the common names in the language of an IOC multilingual list
  (``birdsearch.model.locales``), English where the list has none.
- Paths as given on the command line (relative stays relative, so tables move between machines);
  ``--absolute-paths`` writes them absolute, symlinks resolved.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from birdsearch.analyze.formats import Table
from birdsearch.engine.detections import Detection, RecordingResult

MERGED_MEAN_OF = 3  # a merged detection's confidence: the mean of its best three, as BirdNET's


def merge_consecutive(detections: list[Detection], most: int) -> list[Detection]:
    """Each species' runs of touching or overlapping windows as one detection, at most ``most`` windows a run."""
    if most <= 1:
        return list(detections)
    by_species: dict[str, list[Detection]] = {}
    for d in detections:
        by_species.setdefault(d.scientific, []).append(d)
    merged = []
    for runs in by_species.values():
        run: list[Detection] = []
        for d in sorted(runs, key=lambda d: d.start_s):
            if run and (d.start_s > run[-1].end_s or len(run) == most):
                merged.append(merge(run))
                run = []
            run.append(d)
        merged.append(merge(run))
    return sorted(merged, key=lambda d: (d.start_s, -d.confidence))


def merge(run: list[Detection]) -> Detection:
    """One detection for a run of a species' windows."""
    if len(run) == 1:
        return run[0]
    best = max(run, key=lambda d: d.confidence)
    top = sorted((d.confidence for d in run), reverse=True)[:MERGED_MEAN_OF]
    return replace(
        best, start_s=run[0].start_s, end_s=run[-1].end_s, confidence=round(sum(top) / len(top), 6)
    )


@dataclass(frozen=True)
class Presentation:
    """What a run shows of each result."""

    merge_consecutive: int = 1
    names: Any = None  # birdsearch.model.locales.LocalNames, or None: the index's (English) common names
    absolute_paths: bool = False
    table: Table = Table()  # the settings columns and the overlap the tables carry

    def __call__(self, result: RecordingResult) -> RecordingResult:
        detections = merge_consecutive(result.detections, self.merge_consecutive)
        if self.names is not None:
            detections = [replace(d, common=self.names.name(d.scientific, d.common)) for d in detections]
        path = str(Path(result.path).resolve()) if self.absolute_paths else result.path
        return replace(result, path=path, detections=detections)

    def digest(self) -> str:
        """What decides the tables beyond the detections: a change rewrites them, without the model."""
        described = {
            "merge_consecutive": self.merge_consecutive,
            "language": self.names.language if self.names is not None else None,
            "names": sorted(self.names.by_scientific.items()) if self.names is not None else None,
            "absolute_paths": self.absolute_paths,
            "table": [list(self.table.extra), self.table.overlap_s],
        }
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
