"""Detections in the formats field teams review them in: CSV, Raven Pro selection tables, Audacity
labels and JSON Lines.

The columns follow BirdNET-Analyzer, whose outputs these tools' users already read:

- **Raven Pro selection table** (tab-separated): Raven's own columns ``Selection``, ``View``,
  ``Channel``, ``Begin Time (s)``, ``End Time (s)``, ``Low Freq (Hz)``, ``High Freq (Hz)``, then
  BirdNET's annotation columns ``Common Name``, ``Species Code``, ``Confidence``, ``Begin Path``,
  ``File Offset (s)``, then ours: the scientific name and the best photo (id, score, license,
  attribution). The species code is the scientific name (BirdNET writes an eBird code when it
  knows one, its label otherwise). The combined table of a run places the recordings one after
  another, as Raven opens a list of files (``Begin Time`` offset by the durations before it,
  ``File Offset`` within the file), and comes with the list of files in that order.
- **CSV**: BirdNET's ``Start (s), End (s), Scientific name, Common name, Confidence, File``, then
  the photo columns.
- **Audacity labels**: ``start<TAB>end<TAB>label`` per line, one file per recording (label times
  are the recording's own, so a combined file would mean nothing).
- **JSON Lines**: one object per detection with every field.

Each row is one of the engine's detections (``birdsearch.engine.detections.Detection``) of one
recording (``RecordingResult``). Renderers are pure (detections in, text out); ``write_atomic`` puts
a file in place in one step, so that an interrupted run never leaves half a table behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

from birdsearch.engine.detections import RecordingResult
from birdsearch.errors import ConfigError

FORMATS = ("csv", "raven", "audacity", "jsonl")
# File name endings, after the recording's name (per recording) or "combined" (per run).
SUFFIXES = {
    "csv": ".birdsearch.csv",
    "raven": ".birdsearch.selection.table.txt",
    "audacity": ".birdsearch.labels.txt",
    "jsonl": ".birdsearch.jsonl",
}
COMBINED = ("csv", "raven", "jsonl")  # Audacity labels are per recording only

RAVEN_COLUMNS = (
    "Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
    "Common Name", "Species Code", "Confidence", "Begin Path", "File Offset (s)",
    "Scientific Name", "Photo Id", "Photo Score", "Photo License", "Photo Attribution",
)  # fmt: skip
CSV_COLUMNS = (
    "Start (s)", "End (s)", "Scientific name", "Common name", "Confidence", "File",
    "Photo id", "Photo score", "Photo license", "Photo attribution",
)  # fmt: skip
RAVEN_VIEW = "Spectrogram 1"  # the view Raven draws selections in


def cell(text: str) -> str:
    """A value safe inside a tab-separated line: no tab or line break can shift the columns."""
    return " ".join(str(text).split())


def seconds(value: float) -> str:
    return f"{value:.3f}"


def render_raven(results: Sequence[RecordingResult], combined: bool = False) -> str:
    """A Raven Pro selection table. ``combined``: recordings one after another, as Raven opens a file list."""
    lines = ["\t".join(RAVEN_COLUMNS)]
    selection, offset = 0, 0.0
    for result in results:
        high = min(result.high_hz, result.source_rate / 2)
        for d in result.detections:
            selection += 1
            lines.append("\t".join([
                str(selection), RAVEN_VIEW, "1", seconds(offset + d.start_s), seconds(offset + d.end_s),
                f"{result.low_hz:g}", f"{high:g}", cell(d.common or d.scientific), cell(d.scientific),
                f"{d.confidence:.4f}", cell(result.path), seconds(d.start_s),
                cell(d.scientific), str(d.photo_id), f"{d.photo_score:.4f}", cell(d.photo_license),
                cell(d.photo_attribution),
            ]))  # fmt: skip
        if combined:
            offset += result.duration_s
    return "\n".join(lines) + "\n"


def render_csv(results: Iterable[RecordingResult]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for result in results:
        for d in result.detections:
            writer.writerow([
                seconds(d.start_s), seconds(d.end_s), d.scientific, d.common, f"{d.confidence:.4f}",
                result.path, d.photo_id, f"{d.photo_score:.4f}", d.photo_license, d.photo_attribution,
            ])  # fmt: skip
    return buffer.getvalue()


def render_audacity(result: RecordingResult) -> str:
    """Audacity's label track: start, end and label, tab-separated, times in the recording."""
    lines = []
    for d in result.detections:
        label = f"{d.common or d.scientific} ({d.scientific}) {d.confidence:.3f}"
        lines.append(f"{d.start_s:.6f}\t{d.end_s:.6f}\t{cell(label)}")
    return "".join(f"{line}\n" for line in lines)


def render_jsonl(results: Iterable[RecordingResult]) -> str:
    lines = []
    for result in results:
        for d in result.detections:
            lines.append(json.dumps({"file": result.path, **asdict(d)}, ensure_ascii=False))
    return "".join(f"{line}\n" for line in lines)


def render(fmt: str, results: Sequence[RecordingResult], combined: bool = False) -> str:
    """One format's text for ``results`` (one recording, or all of a run when ``combined``)."""
    if fmt == "raven":
        return render_raven(results, combined)
    if fmt == "csv":
        return render_csv(results)
    if fmt == "jsonl":
        return render_jsonl(results)
    if fmt == "audacity":
        if combined or len(results) != 1:
            raise ValueError("Audacity labels are written per recording")
        return render_audacity(results[0])
    raise ValueError(f"unknown format {fmt!r}: use some of {', '.join(FORMATS)}")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parse_formats(value: str) -> list[str]:
    """``"csv,raven"`` to ["csv", "raven"]; ConfigError naming an unknown one."""
    chosen = [name.strip().lower() for name in value.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in FORMATS]
    if unknown or not chosen:
        raise ConfigError(f"unknown output format(s) {unknown or [value]}: use some of {', '.join(FORMATS)}")
    return list(dict.fromkeys(chosen))
