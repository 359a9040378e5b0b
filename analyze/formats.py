"""Detections in the formats field teams review them in: CSV, Raven Pro selection tables, Audacity
labels, Kaleidoscope and JSON Lines.

The columns follow BirdNET-Analyzer, whose outputs these tools' users already read:

- **Raven Pro selection table** (tab-separated): Raven's own columns ``Selection``, ``View``,
  ``Channel``, ``Begin Time (s)``, ``End Time (s)``, ``Low Freq (Hz)``, ``High Freq (Hz)``, then
  BirdNET's annotation columns ``Common Name``, ``Species Code``, ``Confidence``, ``Begin Path``,
  ``File Offset (s)``, then ours: the scientific name and the best photo (id, score, license,
  attribution). The species code is the species' eBird code, as BirdNET writes it, where the
  index has one, else empty. ``Low Freq``/``High Freq`` box the band the model heard. The combined
  table of a run places the recordings one after another, as Raven opens a list of files
  (``Begin Time`` offset by the durations before it, ``File Offset`` within the file), and comes
  with the list of files in that order.
- **CSV**: BirdNET's ``Start (s), End (s), Scientific name, Common name, Confidence, File``, then
  the photo columns, then the settings asked for (``Table.extra``: BirdNET's
  ``--additional_columns``).
- **Kaleidoscope** (``--rtype kaleidoscope``): BirdNET-Analyzer 2.4's columns exactly, ``INDIR,
  FOLDER, IN FILE, OFFSET, DURATION, scientific_name, common_name, confidence, lat, lon, week,
  overlap, sensitivity``; lat, lon and week hold BirdNET's "not given" (-1) and sensitivity its
  neutral 1.0, as birdsearch has no location filter and no sigmoid to shift.
- **Audacity labels**: ``start<TAB>end<TAB>label`` per line, one file per recording (label times
  are the recording's own, so a combined file would mean nothing).
- **JSON Lines**: one object per detection with every field.

Each row is one of the engine's detections (``birdsearch.engine.detections.Detection``) of one
recording (``RecordingResult``). Renderers are pure (detections in, text out); the writer puts each
file in place in one step (``birdsearch.files.write_atomic``), so that an interrupted run never leaves
half a table behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from birdsearch.engine.detections import RecordingResult
from birdsearch.errors import ConfigError

FORMATS = ("csv", "raven", "audacity", "jsonl")  # the default set
KNOWN = (*FORMATS, "kaleidoscope")
RTYPES = {
    "table": "raven",
    "csv": "csv",
    "audacity": "audacity",
    "kaleidoscope": "kaleidoscope",
}  # BirdNET's --rtype
# File name endings, after the recording's name (per recording) or "combined" (per run).
SUFFIXES = {
    "csv": ".birdsearch.csv",
    "raven": ".birdsearch.selection.table.txt",
    "audacity": ".birdsearch.labels.txt",
    "jsonl": ".birdsearch.jsonl",
    "kaleidoscope": ".birdsearch.kaleidoscope.csv",
}
COMBINED = ("csv", "raven", "jsonl", "kaleidoscope")  # Audacity labels are per recording only

RAVEN_COLUMNS = (
    "Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
    "Common Name", "Species Code", "Confidence", "Begin Path", "File Offset (s)",
    "Scientific Name", "Photo Id", "Photo Score", "Photo License", "Photo Attribution",
)  # fmt: skip
CSV_COLUMNS = (
    "Start (s)", "End (s)", "Scientific name", "Common name", "Confidence", "File",
    "Photo id", "Photo score", "Photo license", "Photo attribution",
)  # fmt: skip
KALEIDOSCOPE_COLUMNS = (
    "INDIR", "FOLDER", "IN FILE", "OFFSET", "DURATION", "scientific_name", "common_name", "confidence",
    "lat", "lon", "week", "overlap", "sensitivity",
)  # fmt: skip
RAVEN_VIEW = "Spectrogram 1"  # the view Raven draws selections in
NOT_GIVEN = -1  # BirdNET's lat, lon and week when none is given
NEUTRAL_SENSITIVITY = 1.0  # BirdNET's sigmoid sensitivity that shifts nothing


@dataclass(frozen=True)
class Table:
    """What a run adds to every row: settings as extra CSV columns, the overlap Kaleidoscope lists."""

    extra: tuple[tuple[str, str], ...] = ()  # (column, value), appended to each CSV row in this order
    overlap_s: float = 0.0  # window minus hop, seconds


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
                f"{result.low_hz:g}", f"{high:g}", cell(d.common or d.scientific), cell(d.species_code),
                f"{d.confidence:.4f}", cell(result.path), seconds(d.start_s),
                cell(d.scientific), str(d.photo_id), f"{d.photo_score:.4f}", cell(d.photo_license),
                cell(d.photo_attribution),
            ]))  # fmt: skip
        if combined:
            offset += result.duration_s
    return "\n".join(lines) + "\n"


def render_csv(results: Iterable[RecordingResult], table: Table = Table()) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *(name for name, _ in table.extra)])
    for result in results:
        for d in result.detections:
            writer.writerow([
                seconds(d.start_s), seconds(d.end_s), d.scientific, d.common, f"{d.confidence:.4f}",
                result.path, d.photo_id, f"{d.photo_score:.4f}", d.photo_license, d.photo_attribution,
                *(value for _, value in table.extra),
            ])  # fmt: skip
    return buffer.getvalue()


def render_kaleidoscope(results: Iterable[RecordingResult], table: Table = Table()) -> str:
    """Kaleidoscope's import table, as BirdNET-Analyzer 2.4 writes it (one row per detection)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(KALEIDOSCOPE_COLUMNS)
    for result in results:
        folder_path, name = os.path.split(result.path)
        parent, folder = os.path.split(folder_path)
        for d in result.detections:
            writer.writerow([
                parent.rstrip("/"), folder, name, seconds(d.start_s), seconds(d.end_s - d.start_s), d.scientific,
                d.common or d.scientific, f"{d.confidence:.4f}", f"{NOT_GIVEN:.4f}", f"{NOT_GIVEN:.4f}", NOT_GIVEN,
                f"{table.overlap_s:g}", f"{NEUTRAL_SENSITIVITY:g}",
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


def render(
    fmt: str, results: Sequence[RecordingResult], combined: bool = False, table: Table = Table()
) -> str:
    """One format's text for ``results`` (one recording, or all of a run when ``combined``)."""
    if fmt == "raven":
        return render_raven(results, combined)
    if fmt == "csv":
        return render_csv(results, table)
    if fmt == "kaleidoscope":
        return render_kaleidoscope(results, table)
    if fmt == "jsonl":
        return render_jsonl(results)
    if fmt == "audacity":
        if combined or len(results) != 1:
            raise ValueError("Audacity labels are written per recording")
        return render_audacity(results[0])
    raise ValueError(f"unknown format {fmt!r}: use some of {', '.join(KNOWN)}")


def parse_formats(value: str) -> list[str]:
    """``"csv,raven"`` to ["csv", "raven"] (BirdNET's ``table`` is ``raven``); ConfigError naming an unknown one."""
    chosen = [
        RTYPES.get(name, name)
        for name in (n.strip().lower() for n in value.replace(" ", ",").split(","))
        if name
    ]
    unknown = [name for name in chosen if name not in KNOWN]
    if unknown or not chosen:
        raise ConfigError(f"unknown output format(s) {unknown or [value]}: use some of {', '.join(KNOWN)} "
                          "(or BirdNET's table)")  # fmt: skip
    return list(dict.fromkeys(chosen))
