"""Evaluation data: query recordings with species, photo galleries, soundscapes; one reader per layout.

- a registered data set (``NAME[:VARIANT]``, e.g. the toy world's ``toy:small``; see
  ``birdsearch.model.registry``): its held-out queries, gallery and soundscapes, and its models.
- SSW60, as released (github.com/visipedia/ssw60)::

      taxa.csv                    label, species_code, ..., common_name, scientific_name, family, order
      audio_ml.csv, audio_ml/{asset_id}.wav                  asset_id, label, split (train/test), ...
      images_nabirds.csv, images_nabirds/{asset_id}.jpg      asset_id, label, split, ..., photographer
      images_inat.csv, images_inat/{asset_id}.jpg            asset_id, label, split, ..., rights_holder

  Queries are the test audio; the gallery the test photos of both image sources (the MTEB
  SSW60A2IRetrieval protocol: any photo of the query's species is relevant). ``export_ssw60`` writes
  the manifests that ``birdsearch index`` and ``birdsearch distill`` read.
- BirdSet-style soundscapes (the Zenodo collections HSN, NES, PER, SNE, SSW, UHH): long recordings
  and one annotation per call (file, start, end, species), cut into 5 s segments labelled with every
  species whose call overlaps them. Recordings without annotations count: all their segments are
  negatives.
- a plain query manifest (``manifest:PATH``): the distillation manifest format, the rows of one
  split (``test`` unless asked). A manifest without such rows is refused, never read whole: its
  other rows may be what a model trained on.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from birdsearch.errors import ConfigError
from birdsearch.model.distill.manifest import (
    Clip,
    SpeciesTable,
    audio_duration,
    load_manifest,
    load_species_table,
    strip_family_gloss,
    write_species_table,
)
from birdsearch.model.names import Taxon
from birdsearch.model.registry import DATA_SETS, DataBundle, data_set
from birdsearch.model.tables import pick_column, read_table

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus")
SSW60_IMAGE_SOURCES = {
    "nabirds": ("images_nabirds", "photographer"),
    "inat": ("images_inat", "rights_holder"),
}


@dataclass
class QuerySet:
    """Query recordings with one species each (``clips[i].species`` indexes ``taxa``)."""

    name: str
    taxa: list[Taxon]
    clips: list[Clip]
    gallery_manifest: Path | None = None  # photos to search, when the layout names them
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class SoundscapeSet:
    """Fixed-length segments of long recordings, each labelled with the species heard in it."""

    name: str
    taxa: list[Taxon]
    segments: list[Clip]  # path + start/end; ``species`` is unused (-1)
    labels: np.ndarray  # (segments, species) bool
    facts: dict[str, Any] = field(default_factory=dict)


# ---- SSW60 ----------------------------------------------------------------------------------------


def ssw60_species(root: Path) -> tuple[SpeciesTable, dict[str, int]]:
    """taxa.csv as a species table, and SSW60 label -> taxa index."""
    frame = read_table(root / "taxa.csv")
    source = str(root / "taxa.csv")
    for column in ("label", "scientific_name", "common_name"):
        pick_column(frame.columns, (column,), column, source)
    taxa, labels = [], {}
    for i, row in enumerate(frame.to_dict("records")):
        family = strip_family_gloss(str(row.get("family", "")))
        taxa.append(Taxon(str(row["scientific_name"]).strip(), str(row["common_name"]).strip(),
                          order=str(row.get("order", "")).strip(), family=family))  # fmt: skip
        labels[str(row["label"]).strip()] = i
    return SpeciesTable(taxa, [str(k) for k in labels]), labels


def ssw60_rows(root: Path, table: str, labels: dict[str, int], split: str | None) -> list[dict[str, Any]]:
    """Rows of one of SSW60's CSVs (optionally one split), with ``species`` (taxa index) added."""
    frame = read_table(root / f"{table}.csv")
    source = str(root / f"{table}.csv")
    for column in ("asset_id", "label", "split"):
        pick_column(frame.columns, (column,), column, source)
    rows = []
    unknown = set()
    for row in frame.to_dict("records"):
        if split is not None and str(row["split"]).strip() != split:
            continue
        label = str(row["label"]).strip()
        if label not in labels:
            unknown.add(label)
            continue
        rows.append({**row, "species": labels[label]})
    if unknown:
        raise ConfigError(f"{source}: labels {sorted(unknown)[:5]} are not in taxa.csv")
    return rows


def check_ssw60_root(root: Path) -> None:
    missing = [name for name in ("taxa.csv", "audio_ml.csv", "audio_ml") if not (root / name).exists()]
    if missing:
        raise ConfigError(
            f"{root} is not an SSW60 directory: {', '.join(missing)} missing. Download ssw60.tar.gz "
            "(github.com/visipedia/ssw60) on a connected machine, untar it and pass that folder"
        )


def load_ssw60(
    root: str | Path,
    split: str = "test",
    image_sources: tuple[str, ...] = ("nabirds", "inat"),
    image_split: str = "test",
) -> QuerySet:
    """SSW60's audio of one split as queries; its gallery manifest written beside nothing (see export)."""
    root = Path(root)
    check_ssw60_root(root)
    table, labels = ssw60_species(root)
    rows = ssw60_rows(root, "audio_ml", labels, split)
    clips = [Clip(root / "audio_ml" / f"{r['asset_id']}.wav", r["species"], split=split) for r in rows]
    if not clips:
        raise ConfigError(
            f"{root / 'audio_ml.csv'}: no audio in split {split!r}; SSW60's splits are train and test"
        )
    missing = [c.path for c in clips if not c.path.is_file()]
    if missing:
        raise ConfigError(f"{len(missing)} SSW60 audio files are missing, e.g. {missing[0]}")
    facts = {
        "root": str(root),
        "split": split,
        "image_sources": list(image_sources),
        "image_split": image_split,
    }
    return QuerySet(f"ssw60-{split}", table.taxa, clips, None, facts)


def ssw60_gallery_rows(
    root: Path, labels: dict[str, int], taxa: list[Taxon], sources, split: str | None
) -> list[dict]:
    out = []
    for source in sources:
        if source not in SSW60_IMAGE_SOURCES:
            raise ConfigError(f"unknown SSW60 image source {source!r}: use nabirds and/or inat")
        folder, credit = SSW60_IMAGE_SOURCES[source]
        for row in ssw60_rows(root, folder, labels, split):
            taxon = taxa[row["species"]]
            out.append({
                "path": str(root / folder / f"{row['asset_id']}.jpg"),
                "species": taxon.scientific,
                "common_name": taxon.common,
                "order": taxon.order,
                "family": taxon.family,
                "attribution": str(row.get(credit, "") or ""),
                "source": f"ssw60/{source}",
                "split": row["split"],
            })  # fmt: skip
    return out


def export_ssw60(
    root: str | Path,
    out: str | Path,
    image_sources: tuple[str, ...] = ("nabirds", "inat"),
    image_split: str = "test",
) -> dict[str, Path]:
    """Write the manifests the other commands read: species table, train/test audio, gallery photos."""
    import pandas as pd

    root, out = Path(root), Path(out)
    check_ssw60_root(root)
    table, labels = ssw60_species(root)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"taxa": write_species_table(table.taxa, out / "taxa.csv")}
    for split in ("train", "test"):
        rows = [
            {
                "path": str(root / "audio_ml" / f"{r['asset_id']}.wav"),
                "species": table.taxa[r["species"]].scientific,
                "split": split,
            }  # fmt: skip
            for r in ssw60_rows(root, "audio_ml", labels, split)
        ]
        paths[f"audio_{split}"] = out / f"audio_{split}.csv"
        pd.DataFrame(rows, columns=["path", "species", "split"]).to_csv(paths[f"audio_{split}"], index=False)
    gallery = ssw60_gallery_rows(
        root, labels, table.taxa, image_sources, None if image_split == "all" else image_split
    )
    paths["gallery"] = out / f"gallery_{image_split}.csv"
    pd.DataFrame(gallery).to_csv(paths["gallery"], index=False)
    log.info("SSW60 manifests written to %s", out)
    return paths


# ---- plain manifests and registered data sets --------------------------------------------------


def select_split(clips: list[Clip], split: str, source: str | Path) -> list[Clip]:
    """The clips of one split; raises ConfigError, naming the splits there are, when it has none.

    Never falls back to every row: those may include the recordings a model trained on.
    """
    chosen = [c for c in clips if c.split == split]
    if not chosen:
        counts = ", ".join(f"{name} {n}" for name, n in sorted(Counter(c.split for c in clips).items()))
        raise ConfigError(
            f"{source}: no {split!r} rows to evaluate on (rows per split: {counts or 'none'}; rows without "
            f"a split count as train). Mark the held-out recordings with a 'split' column set to '{split}'"
            + (", or choose another split with --split" if split == "test" else "")
        )
    return chosen


def load_query_manifest(path: str | Path, taxa: str | Path | None = None, split: str = "test") -> QuerySet:
    """Query recordings from a manifest in the distillation format: its rows of ``split``."""
    manifest = load_manifest(path, taxa, val_fraction=0.0)
    clips = select_split(manifest.clips, split, path)
    return QuerySet(Path(path).stem, manifest.taxa, clips, None, {"manifest": str(path), "split": split})


def load_bundle(bundle: DataBundle, split: str = "test") -> tuple[QuerySet, SoundscapeSet | None]:
    """A registered data set's queries of one split (with its gallery), and its soundscapes.

    Split "test" is the held-out query manifest, every row of it; "train" and "val" are those rows of
    the training manifest (what distillation learns from, and what it may choose settings on).
    """
    table = load_species_table(bundle.taxa)
    if split == "test":
        clips = [
            replace(c, split="test")
            for c in load_manifest(bundle.query_manifest, table, val_fraction=0.0).clips
        ]
    else:
        training = load_manifest(bundle.train_manifest, table, val_fraction=0.0)
        clips = select_split(training.clips, split, bundle.train_manifest)
    name = bundle.name if split == "test" else f"{bundle.name}-{split}"
    queries = QuerySet(name, table.taxa, clips, bundle.gallery_manifest, {**bundle.facts, "split": split})
    soundscapes = None
    if bundle.soundscape_annotations and bundle.soundscape_dir:
        soundscapes = load_soundscapes(
            bundle.soundscape_annotations, bundle.soundscape_dir, table, name=bundle.name
        )
    return queries, soundscapes


def load_data_set(
    spec: str, split: str = "test", progress: bool = True
) -> tuple[QuerySet, SoundscapeSet | None, dict[str, str]]:
    """A registered data set by spec (``toy``, ``toy:small``): queries, soundscapes, default model specs."""
    bundle = data_set(spec, progress=progress)
    if bundle is None:
        raise ConfigError(f"unknown data set {spec!r}: {DATA_SETS.known()}")
    queries, soundscapes = load_bundle(bundle, split)
    return queries, soundscapes, dict(bundle.models)


def sample_queries(clips: list[Clip], limit: int | None, seed: int = 0) -> list[Clip]:
    """At most ``limit`` clips, spread evenly across species, deterministic for a seed.

    Species take turns, in a seeded order, each giving its next clip in a seeded order, until
    ``limit`` are taken: every species is represented once ``limit`` reaches the number of species,
    and no species has more than one clip more than another unless it runs out. The chosen clips
    keep their original order.
    """
    if limit is None or limit >= len(clips):
        return list(clips)
    if limit < 1:
        raise ConfigError(
            f"--max-queries {limit}: give a positive number of queries, or leave it out for all"
        )
    rng = np.random.default_rng(seed)
    by_species: dict[int, list[int]] = {}
    for i, clip in enumerate(clips):
        by_species.setdefault(clip.species, []).append(i)
    queues = [rng.permutation(indices).tolist() for _, indices in sorted(by_species.items())]
    turns = rng.permutation(len(queues)).tolist()
    chosen: list[int] = []
    depth = 0
    while len(chosen) < limit:
        for q in turns:
            if depth < len(queues[q]) and len(chosen) < limit:
                chosen.append(queues[q][depth])
        depth += 1
    return [clips[i] for i in sorted(chosen)]


# ---- soundscapes ----------------------------------------------------------------------------------


ANNOTATION_COLUMNS = {
    "file": ("filename", "file", "filepath", "path", "audio"),
    "start": ("start time (s)", "start_s", "start"),
    "end": ("end time (s)", "end_s", "end"),
    "species": ("species ebird code", "species", "ebird_code", "label", "scientific_name"),
}


def find_soundscape_layout(root: Path) -> tuple[Path, Path]:
    """(annotations table, audio folder) of a soundscape collection folder."""
    for name in ("annotations.csv", "soundscapes.csv", "annotations.tsv"):
        if (root / name).is_file():
            annotations = root / name
            break
    else:
        tables = [p for p in sorted(root.glob("*.csv")) if p.name != "taxa.csv"]
        if not tables:
            raise ConfigError(f"{root}: no annotations table (annotations.csv: file, start, end, species)")
        annotations = tables[0]
    for name in ("soundscape_data", "soundscapes", "audio"):
        if (root / name).is_dir():
            return annotations, root / name
    return annotations, root


def load_soundscapes(
    annotations: str | Path,
    audio_dir: str | Path,
    taxa: SpeciesTable | str | Path,
    segment_s: float = 5.0,
    name: str | None = None,
) -> SoundscapeSet:
    """Cut every recording in ``audio_dir`` into ``segment_s`` segments labelled from ``annotations``.

    A segment is labelled with each species whose annotated call overlaps it by more than zero
    seconds. A final piece shorter than half a segment is dropped.
    """
    annotations, audio_dir = Path(annotations), Path(audio_dir)
    table = taxa if isinstance(taxa, SpeciesTable) else load_species_table(taxa)
    frame = read_table(annotations)
    cols = {k: pick_column(frame.columns, v, k, str(annotations)) for k, v in ANNOTATION_COLUMNS.items()}
    recordings = sorted(p for p in audio_dir.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not recordings:
        raise ConfigError(f"{audio_dir}: no recordings ({', '.join(AUDIO_SUFFIXES)})")
    by_name = {p.name: p for p in recordings}
    events: dict[Path, list[tuple[float, float, int]]] = {}
    unknown_species, unknown_files = set(), set()
    for row in frame.to_dict("records"):
        path = by_name.get(Path(str(row[cols["file"]])).name)
        species = table.lookup(row[cols["species"]])
        if path is None:
            unknown_files.add(str(row[cols["file"]]))
        if species is None:
            unknown_species.add(str(row[cols["species"]]))
        if path is not None and species is not None:
            events.setdefault(path, []).append((float(row[cols["start"]]), float(row[cols["end"]]), species))
    if unknown_species:
        raise ConfigError(
            f"{annotations}: species {sorted(unknown_species)[:8]} are not in the species table; add them "
            "(with their code as 'key') to the table passed as --taxa"
        )
    if unknown_files:
        log.warning("%s: %d annotated files not found under %s", annotations, len(unknown_files), audio_dir)
    if table.lookup_only:  # a world checklist: the species annotated, not every bird
        table, new_row = table.restrict(s for found in events.values() for *_, s in found)
        events = {p: [(a, b, new_row[s]) for a, b, s in found] for p, found in events.items()}
    segments, labels = [], []
    for path in recordings:
        duration = audio_duration(path)
        n = int(duration // segment_s) + (duration % segment_s >= segment_s / 2)
        for i in range(n):
            start, end = i * segment_s, min((i + 1) * segment_s, duration)
            segments.append(Clip(path, -1, start, end, "test"))
            row = np.zeros(len(table.taxa), dtype=bool)
            for a, b, s in events.get(path, []):
                if a < end and b > start:
                    row[s] = True
            labels.append(row)
    facts = {"annotations": str(annotations), "recordings": len(recordings), "segment_s": segment_s}
    return SoundscapeSet(name or audio_dir.name, table.taxa, segments, np.array(labels), facts)


def load_soundscape_dir(
    root: str | Path, taxa: str | Path | None = None, segment_s: float = 5.0
) -> SoundscapeSet:
    """A soundscape collection folder: annotations table, recordings, and its ``taxa.csv`` (else ``taxa``)."""
    root = Path(root)
    annotations, audio_dir = find_soundscape_layout(root)
    taxa_path = root / "taxa.csv" if (root / "taxa.csv").is_file() or not taxa else Path(taxa)
    if not taxa_path.is_file():
        raise ConfigError(
            f"{root}: no species table; put a taxa.csv there or pass --taxa (key = the annotations' species "
            "codes, scientific_name, common_name, order, family)"
        )
    return load_soundscapes(annotations, audio_dir, taxa_path, segment_s, name=root.name)
