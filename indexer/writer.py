"""The write side of an index version: files in a staging directory, then an atomic publish.

A version is written under ``ROOT/.staging/``, each file flushed to disk, ``manifest.json`` last
(with every file's size and sha256); it is then opened and validated like a reader would, renamed
to ``ROOT/vNNNN`` (a rename within one file system is atomic), and only then does ``CURRENT``
move to it (written to a temporary file and renamed over the old pointer). A crash at any point
leaves the published version and its pointer as they were.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from birdsearch.errors import IndexFormatError
from birdsearch.indexer import faults
from birdsearch.indexer.store import (
    FAISS_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    METADATA_FILE,
    METRIC,
    POINTER_FILE,
    SPECIES_EMBEDDINGS_FILE,
    VECTORS_FILE,
    IndexRoot,
    IndexVersion,
    SpeciesRecord,
    version_name,
    version_number,
)

log = logging.getLogger(__name__)

STAGING_DIR = ".staging"

SCHEMA = """
CREATE TABLE images (
    id INTEGER PRIMARY KEY,          -- row in vectors.npy, FAISS id
    key TEXT NOT NULL UNIQUE,        -- path relative to the gallery root, or the URL
    path TEXT,                       -- absolute local path at build time (NULL for URL sources)
    url TEXT,
    species TEXT NOT NULL COLLATE NOCASE,
    common_name TEXT NOT NULL DEFAULT '',
    genus TEXT NOT NULL DEFAULT '' COLLATE NOCASE,
    family TEXT NOT NULL DEFAULT '' COLLATE NOCASE,
    order_name TEXT NOT NULL DEFAULT '' COLLATE NOCASE,
    license TEXT NOT NULL DEFAULT '',
    attribution TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '',
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    content_hash TEXT NOT NULL,      -- sha256 of the file's bytes
    thumbnail TEXT,                  -- relative to the index root
    blob TEXT,                       -- stored original (URL sources), relative to the index root
    size_bytes INTEGER,              -- with mtime_ns: lets a reindex skip re-hashing unchanged files
    mtime_ns INTEGER
);
CREATE INDEX images_species ON images (species);
CREATE INDEX images_genus ON images (genus);
CREATE INDEX images_family ON images (family);
CREATE INDEX images_order ON images (order_name);
CREATE INDEX images_hash ON images (content_hash);
CREATE TABLE species (
    scientific TEXT PRIMARY KEY COLLATE NOCASE,
    common_name TEXT NOT NULL DEFAULT '',
    kingdom TEXT NOT NULL DEFAULT '',
    phylum TEXT NOT NULL DEFAULT '',
    class TEXT NOT NULL DEFAULT '',
    order_name TEXT NOT NULL DEFAULT '',
    family TEXT NOT NULL DEFAULT '',
    genus TEXT NOT NULL DEFAULT '',
    image_count INTEGER NOT NULL,
    resolved_by TEXT NOT NULL,       -- manifest, table, genus or unknown
    embedding_row INTEGER NOT NULL   -- row in species_embeddings.npy
);
CREATE TABLE failures (key TEXT NOT NULL, reason TEXT NOT NULL);
"""


@dataclass
class ImageRow:
    """One image as the writer stores it (the id is its position in the list given to the writer)."""

    key: str
    species: str
    width: int
    height: int
    content_hash: str
    path: str | None = None
    url: str | None = None
    common_name: str = ""
    genus: str = ""
    family: str = ""
    order: str = ""
    license: str = ""
    attribution: str = ""
    source: str = ""
    thumbnail: str | None = None
    blob: str | None = None
    size_bytes: int | None = None
    mtime_ns: int | None = None


@dataclass
class VersionContent:
    """Everything a version holds, ready to be written."""

    vectors: np.ndarray  # (N, D) float32 unit vectors, row i = images[i]
    images: list[ImageRow]
    species: list[SpeciesRecord]  # one per distinct ImageRow.species
    species_embeddings: np.ndarray  # (S, D) float32, row j = species[j]
    index: Any  # a FAISS index over ``vectors`` (ids = rows)
    manifest: dict[str, Any]  # teacher, index_type, search_params, recall_at_10, source_hash, ...
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a flushed temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_version_files(directory: Path, content: VersionContent) -> dict[str, Any]:
    """Write a version's files into ``directory`` (manifest last); returns the manifest written."""
    import faiss

    check_content(content)
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / VECTORS_FILE, np.ascontiguousarray(content.vectors, dtype=np.float32))
    faults.point("write.vectors")
    faiss.write_index(content.index, str(directory / FAISS_FILE))
    write_metadata(directory / METADATA_FILE, content)
    faults.point("write.metadata")
    np.save(directory / SPECIES_EMBEDDINGS_FILE, np.ascontiguousarray(content.species_embeddings, np.float32))
    files = {}
    for name in (VECTORS_FILE, FAISS_FILE, METADATA_FILE, SPECIES_EMBEDDINGS_FILE):
        fsync_file(directory / name)
        files[name] = {"bytes": (directory / name).stat().st_size, "sha256": sha256_file(directory / name)}
    manifest = {
        "format_version": FORMAT_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "metric": METRIC,
        "count": len(content.images),
        "dim": int(content.vectors.shape[1]),
        "species_count": len(content.species),
        "failed_count": len(content.failures),
        **content.manifest,
        "files": files,
    }
    faults.point("write.manifest")
    write_atomic(directory / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return manifest


def check_content(content: VersionContent) -> None:
    n = len(content.images)
    if content.vectors.ndim != 2 or content.vectors.shape[0] != n:
        raise IndexFormatError(f"vectors {content.vectors.shape} do not match {n} images")
    if content.index.ntotal != n:
        raise IndexFormatError(f"FAISS index holds {content.index.ntotal} vectors for {n} images")
    if content.species_embeddings.shape != (len(content.species), content.vectors.shape[1]):
        raise IndexFormatError(
            f"species embeddings {content.species_embeddings.shape} do not match {len(content.species)} species"
        )
    missing = {row.species for row in content.images} - {s.scientific for s in content.species}
    if missing:
        raise IndexFormatError(f"species {sorted(missing)[:5]} have images but no species record")


def write_metadata(path: Path, content: VersionContent) -> None:
    if path.exists():
        path.unlink()
    conn = sqlite3.connect(path)
    try:
        conn.executescript(SCHEMA)
        conn.executemany(
            "INSERT INTO images (id, key, path, url, species, common_name, genus, family, order_name, license, "
            "attribution, source, width, height, content_hash, thumbnail, blob, size_bytes, mtime_ns) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                (i, r.key, r.path, r.url, r.species, r.common_name, r.genus, r.family, r.order, r.license,
                 r.attribution, r.source, r.width, r.height, r.content_hash, r.thumbnail, r.blob,
                 r.size_bytes, r.mtime_ns)
                for i, r in enumerate(content.images)
            ),
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO species VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                (s.scientific, s.common_name, s.kingdom, s.phylum, s.klass, s.order, s.family, s.genus,
                 s.image_count, s.resolved_by, row)
                for row, s in enumerate(content.species)
            ),
        )  # fmt: skip
        conn.executemany("INSERT INTO failures VALUES (?, ?)", content.failures)
        conn.commit()
    finally:
        conn.close()


def staging_root(root: Path) -> Path:
    return root / STAGING_DIR


def new_staging_dir(root: Path) -> Path:
    """A fresh directory under ``ROOT/.staging`` for a version being written."""
    directory = staging_root(root) / f"build-{os.getpid()}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%f}"
    directory.mkdir(parents=True)
    return directory


def next_version_name(root: Path) -> str:
    names = IndexRoot(root).versions()
    return version_name(version_number(names[-1]) + 1 if names else 1)


def publish(root: Path, staging: Path) -> str:
    """Validate a written version, move it to its final name and point ``CURRENT`` at it; returns the name."""
    IndexVersion(staging).validate()
    name = next_version_name(root)
    final = root / name
    os.replace(staging, final)
    fsync_dir(root)
    faults.point("publish.renamed")
    write_atomic(root / POINTER_FILE, f"{name}\n".encode())
    log.info("published %s", final)
    return name


def prune_versions(root: Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` versions (never the published one); returns what was deleted."""
    index_root = IndexRoot(root)
    current = index_root.current_name()
    names = index_root.versions()
    doomed = [n for n in names[: max(0, len(names) - max(1, keep))] if n != current]
    for name in doomed:
        shutil.rmtree(root / name, ignore_errors=True)
        log.info("removed old version %s", name)
    return doomed


def remove_unpublished(root: Path) -> list[str]:
    """Delete leftovers of crashed runs: staging directories and versions newer than the published one."""
    removed = []
    if staging_root(root).is_dir():
        for leftover in staging_root(root).iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(f"{STAGING_DIR}/{leftover.name}")
    current = IndexRoot(root).current_name()
    floor = version_number(current) if current else 0
    for name in IndexRoot(root).versions():
        if version_number(name) > floor:
            shutil.rmtree(root / name, ignore_errors=True)
            removed.append(name)
    if removed:
        log.info("removed leftovers of an interrupted run: %s", ", ".join(removed))
    return removed


def flat_index(vectors: np.ndarray) -> Any:
    """An exact inner-product FAISS index over ``vectors``."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def write_simple_index(
    root: str | Path,
    vectors: np.ndarray,
    species: Sequence[str],
    species_embeddings: np.ndarray | None = None,
    teacher: dict[str, Any] | None = None,
    records: Sequence[dict[str, Any]] | None = None,
) -> IndexVersion:
    """Write and publish a small exact index from vectors and labels, without a gallery or a model.

    For tests and tools that need an index of known content (the service's and the evaluation's
    tests use it). ``species[i]`` labels ``vectors[i]``; ``species_embeddings`` (S, D) is in sorted
    species order (random unit vectors when omitted); ``records[i]`` overrides ImageRow fields.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    names = sorted(set(species))
    rows = []
    for i, label in enumerate(species):
        extra = dict(records[i]) if records else {}
        row = ImageRow(key=f"{label}/{i:06d}.jpg", species=label, width=1, height=1, content_hash=f"{i:064x}")
        row.genus = label.split()[0] if " " in label else ""
        rows.append(ImageRow(**{**asdict(row), **extra}))
    counts = {name: sum(1 for s in species if s == name) for name in names}
    taxa = [
        SpeciesRecord(n, "", "Animalia", "Chordata", "Aves", "", "", n.split()[0], counts[n], "unknown")
        for n in names
    ]
    if species_embeddings is None:
        rng = np.random.default_rng(0)
        species_embeddings = rng.standard_normal((len(names), vectors.shape[1])).astype(np.float32)
        species_embeddings /= np.linalg.norm(species_embeddings, axis=1, keepdims=True)
    content = VersionContent(
        vectors=vectors,
        images=rows,
        species=taxa,
        species_embeddings=np.asarray(species_embeddings, np.float32),
        index=flat_index(vectors),
        manifest={
            "teacher": teacher
            or {"id": "test", "dim": vectors.shape[1], "weights_sha256": "", "preprocess": {}},
            "index_type": "Flat",
            "search_params": {},
            "recall_at_10": 1.0,
            "source_hash": hashlib.sha256(json.dumps(list(species)).encode()).hexdigest(),
            "species_text": {"format": "taxon_com", "templates": "openai"},
        },
    )
    staging = new_staging_dir(root)
    write_version_files(staging, content)
    name = publish(root, staging)
    return IndexRoot(root).open(name)
