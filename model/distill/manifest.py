"""Distillation manifests and species tables: read, validate as untrusted input, resolve species.

A manifest is a CSV, TSV or Parquet table, one row per recording (or per segment of one):

    path      audio file, absolute or relative to the manifest's folder (aliases: audio, file, filepath)
    species   a species: a key, scientific name or common name from the species table (alias: label)
    start_s   optional segment start, seconds (alias: start)
    end_s     optional segment end, seconds (alias: end)
    split     optional: train, val (valid, validation) or test; test rows are never trained on

A species table (``--taxa``) is a CSV with ``scientific_name`` and optionally ``common_name``,
``order``, ``family``, ``kingdom``, ``phylum``, ``class`` and ``key`` (any identifier the manifest
uses, e.g. an eBird code or a numeric label), or a world checklist as published: the eBird taxonomy
CSV, the eBird/Clements checklist CSV or the IOC master list as CSV (``birdsearch.model.world_lists``). Without one, the manifest's own ``scientific_name``,
``common_name``, ``order`` and ``family`` columns are used, or its species values must be binomials.

Everything is checked before anything trains: missing columns, missing or unreadable files, unknown
species, bad times; each error names the rows (line numbers as a spreadsheet shows them) and the fix.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from birdsearch.errors import ConfigError
from birdsearch.model.names import Taxon, normalise_name
from birdsearch.model.tables import pick_column, read_table
from birdsearch.model.world_lists import read_world_list

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

PATH_COLUMNS = ("path", "audio", "file", "filepath", "filename")
SPECIES_COLUMNS = ("species", "label", "scientific_name")
START_COLUMNS = ("start_s", "start")
END_COLUMNS = ("end_s", "end")
SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MAX_LISTED = 5  # examples quoted in an error message
TIME_TOLERANCE_S = 0.05  # an end time this far past the file's end is a rounding matter, not an error


@dataclass(frozen=True)
class Clip:
    """One training or evaluation example: a recording, or a segment of one, and its species."""

    path: Path
    species: int  # index into the taxa list
    start_s: float | None = None
    end_s: float | None = None
    split: str = "train"


@dataclass
class Manifest:
    """Validated clips and the species they refer to (``clips[i].species`` indexes ``taxa``)."""

    clips: list[Clip]
    taxa: list[Taxon]
    source: str  # where it was read from

    def split(self, name: str) -> list[Clip]:
        return [c for c in self.clips if c.split == name]

    def digest(self) -> str:
        """SHA-256 of the rows (path, size, species, times, split): the training data hash in cards."""
        h = hashlib.sha256()
        for taxon in self.taxa:
            h.update(f"taxon\t{taxon.lineage}\t{taxon.common}\n".encode())
        for c in self.clips:
            size = c.path.stat().st_size if c.path.exists() else -1
            h.update(f"{c.path}\t{size}\t{c.species}\t{c.start_s}\t{c.end_s}\t{c.split}\n".encode())
        return h.hexdigest()


def strip_family_gloss(family: str) -> str:
    """'Anatidae (Ducks, Geese, and Waterfowl)' (SSW60's taxa.csv) -> 'Anatidae'."""
    return family.split("(")[0].strip()


class SpeciesTable:
    """Taxa and the names that refer to each: keys, scientific names, common names."""

    def __init__(self, taxa: list[Taxon], keys: Sequence[str] | None = None, lookup_only: bool = False):
        self.taxa = taxa
        self.keys = list(keys) if keys else []
        # A world checklist lists every bird: it names species, and a data set's species are the ones
        # its rows name (``restrict``), not all ten thousand as classes and distillation targets.
        self.lookup_only = lookup_only
        self.index: dict[str, int] = {}
        self.ambiguous: set[str] = set()
        for i, taxon in enumerate(taxa):
            names = [taxon.scientific, taxon.common, keys[i] if keys else ""]
            for name in {normalise_name(n) for n in names if str(n).strip()}:
                if name in self.index and self.index[name] != i:
                    self.ambiguous.add(name)
                self.index.setdefault(name, i)

    def lookup(self, value: object) -> int | None:
        """Index of the species ``value`` names; None when unknown; ConfigError when ambiguous."""
        name = normalise_name(value)
        if name in self.ambiguous:
            raise ConfigError(f"species {value!r} names more than one species in the species table")
        return self.index.get(name)

    def restrict(self, rows: Iterable[int]) -> tuple[SpeciesTable, dict[int, int]]:
        """The species at ``rows`` (in table order) as a table of their own, and old row -> new row."""
        kept = sorted(set(rows))
        keys = [self.keys[i] for i in kept] if self.keys else None
        log.info("%d of the species table's %d species are used", len(kept), len(self.taxa))
        return SpeciesTable([self.taxa[i] for i in kept], keys), {old: new for new, old in enumerate(kept)}

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, source: str) -> SpeciesTable:
        """Build from a table with scientific_name (+ common_name, order, family, ..., key)."""
        sci = pick_column(frame.columns, ("scientific_name", "scientific", "sci"), "scientific name", source)
        col = {
            field: pick_column(frame.columns, names, field, source, required=False)
            for field, names in {
                "common": ("common_name", "common", "com"),
                "order": ("order",),
                "family": ("family",),
                "kingdom": ("kingdom",),
                "phylum": ("phylum",),
                "klass": ("class", "klass"),
                "key": ("key", "species_code", "code", "label"),
            }.items()
        }
        taxa: list[Taxon] = []
        keys: list[str] = []
        seen: dict[str, int] = {}
        for row_number, row in enumerate(frame.to_dict("records"), start=2):
            scientific = re.sub(r"\s+", " ", str(row[sci])).strip()
            if scientific in seen:
                raise ConfigError(
                    f"{source} line {row_number}: {scientific!r} repeats line {seen[scientific]}"
                )
            seen[scientific] = row_number
            fields = {f: str(row[c]).strip() for f, c in col.items() if c is not None and f != "key"}
            if "family" in fields:
                fields["family"] = strip_family_gloss(fields["family"])
            try:
                taxa.append(Taxon(scientific, **{k: v for k, v in fields.items() if v or k == "common"}))
            except ConfigError as e:
                raise ConfigError(f"{source} line {row_number}: {e}") from e
            keys.append(str(row[col["key"]]).strip() if col["key"] else "")
        if not taxa:
            raise ConfigError(f"{source}: the species table is empty")
        return cls(taxa, keys)


def load_species_table(path: str | Path) -> SpeciesTable:
    """Read a species table: the project's layout (see the module docstring), or a published world
    checklist (eBird taxonomy, eBird/Clements, IOC master list; ``birdsearch.model.world_lists``)."""
    world = read_world_list(path)
    if world is not None:
        return SpeciesTable(world.taxa, world.keys, lookup_only=True)
    return SpeciesTable.from_frame(read_table(path), str(path))


def write_species_table(taxa: Sequence[Taxon], path: str | Path, keys: Sequence[str] | None = None) -> Path:
    """Write taxa as a species table that ``load_species_table`` reads back."""
    import pandas as pd

    rows = [
        {
            "key": keys[i] if keys else "",
            "scientific_name": t.scientific,
            "common_name": t.common,
            "order": t.order,
            "family": t.family,
            "kingdom": t.kingdom,
            "phylum": t.phylum,
            "class": t.klass,
        }
        for i, t in enumerate(taxa)
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def table_from_manifest(frame: pd.DataFrame, species_col: str, source: str) -> SpeciesTable:
    """Without a species table: the manifest's taxonomy columns, or binomial species values."""
    has_sci = pick_column(frame.columns, ("scientific_name",), "", source, required=False)
    if has_sci:
        columns = [
            c for c in frame.columns if c.lower() in {"scientific_name", "common_name", "order", "family"}
        ]
        unique = frame[columns].drop_duplicates(subset=[has_sci])
        return SpeciesTable.from_frame(unique, source)
    values = sorted({re.sub(r"\s+", " ", str(v)).strip() for v in frame[species_col]})
    bad = [v for v in values if len(v.split()) < 2]
    if bad:
        raise ConfigError(
            f"{source}: species {', '.join(map(repr, bad[:MAX_LISTED]))} are not binomials, and no species "
            "table was given; pass --taxa with a species table (scientific_name, common_name, order, family)"
        )
    log.warning("%s: no species table; taxa have no common names or higher ranks", source)
    return SpeciesTable([Taxon(v) for v in values])


def parse_time(value: object) -> float | None:
    """A time in seconds, None when blank; ValueError when not a finite number."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return None
    number = float(value)  # type: ignore[arg-type]  # ValueError/TypeError for what is not a number
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not finite")
    return number


def listed(rows: list[str], total: int | None = None) -> str:
    total = len(rows) if total is None else total
    more = f" (and {total - MAX_LISTED} more)" if total > MAX_LISTED else ""
    return "; ".join(rows[:MAX_LISTED]) + more


def load_manifest(
    path: str | Path,
    taxa: str | Path | SpeciesTable | None = None,
    audio_root: str | Path | None = None,
    check_audio: bool = True,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Manifest:
    """Read and validate a manifest; see the module docstring for the columns.

    Args:
        path: the manifest (CSV, TSV or Parquet).
        taxa: a species table (path or loaded); None to take species from the manifest itself.
        audio_root: folder relative paths are resolved against (default: the manifest's folder).
        check_audio: read every file's header (format, length) and check the segment times fit it.
        val_fraction: without a ``val`` split, this share of each species' training clips (at least
            one when a species has two or more) is held out for validation, chosen by ``seed``.
    Raises:
        ConfigError naming every kind of problem found, with example rows.
    """
    path = Path(path)
    frame = read_table(path)
    source = str(path)
    if frame.empty:
        raise ConfigError(f"{source}: the manifest has no rows")
    path_col = pick_column(frame.columns, PATH_COLUMNS, "audio path", source)
    species_col = pick_column(frame.columns, SPECIES_COLUMNS, "species", source)
    start_col = pick_column(frame.columns, START_COLUMNS, "", source, required=False)
    end_col = pick_column(frame.columns, END_COLUMNS, "", source, required=False)
    split_col = pick_column(frame.columns, ("split",), "", source, required=False)
    table = (
        taxa
        if isinstance(taxa, SpeciesTable)
        else load_species_table(taxa)
        if taxa is not None
        else table_from_manifest(frame, str(species_col), source)
    )
    root = Path(audio_root) if audio_root is not None else path.parent
    clips, problems = parse_rows(frame, table, root, path_col, species_col, start_col, end_col, split_col)
    raise_problems(source, problems)
    if table.lookup_only:
        table, new_row = table.restrict(c.species for c in clips)
        clips = [replace(c, species=new_row[c.species]) for c in clips]
    if check_audio:
        raise_problems(source, check_audio_files(clips))
    manifest = Manifest(clips, table.taxa, source)
    if split_col is None or not manifest.split("val"):
        manifest.clips = hold_out(manifest.clips, val_fraction, seed)
    return manifest


def parse_rows(
    frame: pd.DataFrame,
    table: SpeciesTable,
    root: Path,
    path_col: str | None,
    species_col: str | None,
    start_col: str | None,
    end_col: str | None,
    split_col: str | None,
) -> tuple[list[Clip], dict[str, list[str]]]:
    """Rows to clips, and the problems found, by kind: {kind: ["line N: detail", ...]}."""
    problems: dict[str, list[str]] = {}
    clips: list[Clip] = []
    for line, row in enumerate(frame.to_dict("records"), start=2):
        raw_path = str(row[path_col]).strip()
        audio = Path(raw_path).expanduser()
        audio = audio if audio.is_absolute() else root / audio
        species = None
        try:
            species = table.lookup(row[species_col])
        except ConfigError as e:
            problems.setdefault("ambiguous species", []).append(f"line {line}: {e}")
        if species is None:
            problems.setdefault("unknown species", []).append(f"line {line}: {row[species_col]!r}")
        if not raw_path:
            problems.setdefault("empty path", []).append(f"line {line}")
        elif not audio.is_file():
            problems.setdefault("missing audio file", []).append(f"line {line}: {audio}")
        start = end = None
        try:
            start = parse_time(row[start_col]) if start_col else None
            end = parse_time(row[end_col]) if end_col else None
            if (start is not None and start < 0) or (end is not None and end <= (start or 0.0)):
                raise ValueError(f"start {start} and end {end} must satisfy 0 <= start < end")
        except (TypeError, ValueError) as e:
            problems.setdefault("bad times", []).append(f"line {line}: {e}")
        split = "train"
        if split_col:
            split = SPLITS.get(str(row[split_col]).strip().lower(), "")
            if not split:
                problems.setdefault("unknown split", []).append(
                    f"line {line}: {row[split_col]!r} (use train, val or test)"
                )
        if species is not None:
            clips.append(Clip(audio, species, start, end, split or "train"))
    return clips, problems


def raise_problems(source: str, problems: dict[str, list[str]]) -> None:
    if not problems:
        return
    hints = {
        "unknown species": "add them to the species table (--taxa) or fix the names",
        "missing audio file": "fix the paths, or pass --audio-root for relative ones",
        "bad times": "start_s and end_s are seconds from the file's start, 0 <= start < end",
        "unreadable audio": "convert them to wav, flac, ogg or mp3, or drop the rows",
        "times outside the recording": "end_s must not pass the file's length",
    }
    parts = [
        f"{len(rows)} {kind} ({listed(rows)})" + (f": {hints[kind]}" if kind in hints else "")
        for kind, rows in problems.items()
    ]
    raise ConfigError(f"{source}: " + " | ".join(parts))


def audio_duration(path: Path) -> float:
    """Seconds of audio per the file's header (no decoding)."""
    import soundfile as sf

    info = sf.info(str(path))
    if info.frames <= 0 or info.samplerate <= 0:
        raise ValueError("no audio frames")
    return info.frames / info.samplerate


def check_audio_files(clips: list[Clip], threads: int = 8) -> dict[str, list[str]]:
    """Read each distinct file's header once; report unreadable files and segments past the end."""
    paths = sorted({c.path for c in clips})

    def probe(p: Path) -> tuple[Path, float | str]:
        try:
            return p, audio_duration(p)
        except Exception as e:  # libsndfile raises several types; every one means "unreadable"
            return p, f"{type(e).__name__}: {e}"

    with ThreadPoolExecutor(threads) as pool:
        durations = dict(pool.map(probe, paths))
    problems: dict[str, list[str]] = {}
    unreadable = [f"{p}: {d}" for p, d in durations.items() if isinstance(d, str)]
    if unreadable:
        problems["unreadable audio"] = unreadable
    for c in clips:
        duration = durations[c.path]
        if isinstance(duration, float) and c.end_s is not None and c.end_s > duration + TIME_TOLERANCE_S:
            problems.setdefault("times outside the recording", []).append(
                f"{c.path.name}: end {c.end_s:g} s > length {duration:.2f} s"
            )
        if isinstance(duration, float) and c.start_s is not None and c.start_s >= duration:
            problems.setdefault("times outside the recording", []).append(
                f"{c.path.name}: start {c.start_s:g} s >= length {duration:.2f} s"
            )
    return problems


def hold_out(clips: list[Clip], fraction: float, seed: int) -> list[Clip]:
    """Move ``fraction`` of each species' training clips (at least one of two or more) to ``val``."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"validation fraction {fraction} must be in [0, 1)")
    if fraction == 0.0:
        return clips
    rng = np.random.default_rng(seed)
    by_species: dict[int, list[int]] = {}
    for i, c in enumerate(clips):
        if c.split == "train":
            by_species.setdefault(c.species, []).append(i)
    chosen: set[int] = set()
    for species in sorted(by_species):
        members = by_species[species]
        if len(members) < 2:
            continue
        count = max(1, round(fraction * len(members)))
        chosen.update(rng.choice(members, size=count, replace=False).tolist())
    return [
        Clip(c.path, c.species, c.start_s, c.end_s, "val") if i in chosen else c for i, c in enumerate(clips)
    ]
