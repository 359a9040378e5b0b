"""Reading a gallery: a folder tree ``<species>/<image>`` or a manifest (CSV, TSV or Parquet, read by
``birdsearch.model.tables``).

The reader only lists what the gallery holds; nothing is opened or fetched here. Each item has a
``key`` (the path relative to the gallery, or the URL) that names it across reindexes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from birdsearch.errors import ConfigError
from birdsearch.model.tables import pick_columns, read_table

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
# Manifest column names accepted for each field (case-insensitive), first match wins.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "path": ("path", "file", "filepath", "file_path", "image", "image_path", "filename", "url", "image_url"),
    "species": ("species", "scientific_name", "species_scientific", "scientific", "label", "taxon"),
    "common_name": ("common_name", "common", "species_common", "vernacular_name", "english_name"),
    "taxonomy": ("taxonomy", "inat_style_taxonomy", "lineage"),
    "kingdom": ("kingdom",),
    "phylum": ("phylum",),
    "class": ("class", "klass"),
    "order": ("order",),
    "family": ("family",),
    "genus": ("genus",),
    "species_code": ("species_code", "ebird_code"),
    "license": ("license", "licence"),
    "attribution": ("attribution", "author", "creator", "photographer", "rights_holder", "credit"),
    "source": ("source", "source_url", "page", "page_url", "origin"),
}
TAXONOMY_FIELDS = ("common_name", "kingdom", "phylum", "class", "order", "family", "genus", "species_code")


@dataclass
class GalleryItem:
    """One photo the gallery lists."""

    key: str  # stable name: path relative to the gallery root (POSIX), or the URL
    label: str  # species label as the gallery gives it
    path: str | None = None  # absolute local path
    url: str | None = None  # http(s) source
    given: dict[str, str] = field(default_factory=dict)  # taxonomy columns from a manifest
    license: str = ""
    attribution: str = ""
    source: str = ""


@dataclass
class Gallery:
    """What a gallery lists, sorted by key, and the entries that could not be used."""

    kind: str  # 'folder' or 'manifest'
    location: Path
    items: list[GalleryItem]
    skipped: list[tuple[str, str]]  # (key, reason)
    manifest_sha256: str | None = None  # of the manifest file's bytes


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def read_gallery(location: str | Path) -> Gallery:
    """Read a folder tree or a manifest file; raises ConfigError when it is neither or is empty."""
    path = Path(location).expanduser()
    if path.is_dir():
        gallery = read_folder(path)
    elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        gallery = read_manifest(path)
    elif path.exists():
        raise ConfigError(
            f"gallery {path} is neither a folder nor a manifest ({', '.join(MANIFEST_SUFFIXES)})"
        )
    else:
        raise ConfigError(f"gallery {path} does not exist")
    if not gallery.items:
        raise ConfigError(f"gallery {path} lists no images (skipped {len(gallery.skipped)} entries)")
    gallery.items.sort(key=lambda item: item.key)
    return gallery


def read_folder(root: Path) -> Gallery:
    """``root/<species>/<...>/<image>``: every non-hidden file under a species folder is an item.

    Symlinked files count (as their targets), symlinked folders are not followed, hidden files and
    folders are not the gallery's. Walks with ``os.scandir`` on strings: at 100,000 files, pathlib's
    per-file ``resolve()`` and ``relative_to()`` took most of a reindex that found nothing new.
    """
    base = root.resolve()
    items: list[GalleryItem] = []
    skipped: list[tuple[str, str]] = []
    for key, path in walk_files(str(base), skipped):
        if "/" not in key:
            skipped.append((key, "not inside a species folder (expected <species>/<image>)"))
            continue
        items.append(GalleryItem(key=key, label=key.split("/", 1)[0], path=path))
    skipped.sort()
    return Gallery("folder", base, items, skipped)


def walk_files(base: str, skipped: list[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """(key relative to ``base`` in POSIX form, absolute path) of every non-hidden regular file.

    A folder that cannot be listed is added to ``skipped`` with the reason, and the walk goes on.
    """
    stack = [("", base)]
    while stack:
        prefix, folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as e:
            skipped.append((prefix or ".", f"cannot list folder: {e.strerror or e}"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            key = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                stack.append((key + "/", entry.path))
            elif entry.is_file():  # follows a link: a link to a file counts, a broken one does not
                yield key, os.path.realpath(entry.path) if entry.is_symlink() else entry.path


def find_columns(columns: list[str], path: Path) -> dict[str, str]:
    """The manifest's column of each field it has (``COLUMN_ALIASES``); path and species are required."""
    found = pick_columns(columns, COLUMN_ALIASES)
    missing = [name for name in ("path", "species") if name not in found]
    if missing:
        raise ConfigError(
            f"gallery manifest {path} has no {' or '.join(missing)} column (columns: {', '.join(columns)}); "
            f"name them e.g. 'path' (a file or an http(s) URL) and 'species'"
        )
    return found


def cell(row: Any, column: str | None) -> str:
    if column is None:
        return ""
    value = row[column]
    return "" if value is None or value != value else str(value).strip()  # NaN != NaN


def read_manifest(path: Path) -> Gallery:
    """A CSV/TSV/Parquet table: path or URL, species, optional taxonomy, license, attribution, source."""
    from birdsearch.indexer.taxonomy import parse_taxonomy_string

    table = read_table(path, "gallery manifest")
    columns = find_columns([str(c) for c in table.columns], path)
    base = path.resolve().parent
    items: list[GalleryItem] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    for number, row in enumerate(table.to_dict("records"), start=2):  # row 1 is the header
        where = cell(row, columns["path"])
        label = cell(row, columns["species"])
        if not where or not label:
            skipped.append((f"{path.name}:{number}", "row lacks a path or a species"))
            continue
        item = manifest_item(where, label, base)
        if item.key in seen:
            skipped.append((item.key, f"listed twice ({path.name} row {number}); the first row is used"))
            continue
        seen.add(item.key)
        item.given = {f: cell(row, columns.get(f)) for f in TAXONOMY_FIELDS if cell(row, columns.get(f))}
        item.given.update(parse_taxonomy_string(cell(row, columns.get("taxonomy"))))
        item.license = cell(row, columns.get("license"))
        item.attribution = cell(row, columns.get("attribution"))
        item.source = cell(row, columns.get("source")) or (item.url or "")
        items.append(item)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Gallery("manifest", path.resolve(), items, skipped, manifest_sha256=digest)


def manifest_item(where: str, label: str, base: Path) -> GalleryItem:
    if is_url(where):
        return GalleryItem(key=where, label=label, url=where)
    file = Path(where).expanduser()
    file = file if file.is_absolute() else base / file
    file = file.resolve()
    try:
        key = file.relative_to(base).as_posix()
    except ValueError:  # outside the manifest's folder: the absolute path is the key
        key = file.as_posix()
    return GalleryItem(key=key, label=label, path=str(file))
