"""The write side of an index version: files in a staging directory, then an atomic publish.

A version is written under ``ROOT/.staging/``, each file flushed to disk, ``manifest.json`` last
(with every file's size and sha256); it is then opened and validated like a reader would, renamed
to ``ROOT/vNNNN`` (a rename within one file system is atomic), and only then does ``CURRENT``
move to it (written to a temporary file and renamed over the old pointer). A crash at any point
leaves the published version and its pointer as they were.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from birdsearch.errors import IndexFormatError
from birdsearch.files import fsync_dir, write_atomic
from birdsearch.indexer import faults
from birdsearch.indexer.store import (
    FAISS_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    METADATA_FILE,
    METRIC,
    OPTIONAL_FILES,
    POINTER_FILE,
    SPECIES_EMBEDDINGS_FILE,
    VECTORS_FILE,
    VERSION_FILES,
    ImageRow,
    IndexRoot,
    IndexVersion,
    SpeciesRecord,
    VectorRows,
    sha256_file,
    version_name,
    version_number,
    write_metadata,
    write_npy,
)

log = logging.getLogger(__name__)

STAGING_DIR = ".staging"


@dataclass
class VersionContent:
    """Everything a version holds, ready to be written."""

    # (N, D) float32 unit vectors, row i = images[i]: an array, or rows already streamed to the
    # version's own vectors.npy (``store.write_npy``), which are then not copied.
    vectors: np.ndarray | VectorRows
    images: list[ImageRow]
    species: list[SpeciesRecord]  # one per distinct ImageRow.species
    species_embeddings: np.ndarray  # (S, D) float32, row j = species[j]
    index: Any  # a FAISS index over ``vectors`` (ids = rows); a re-rank store it needs is already in the directory
    manifest: dict[str, Any]  # teacher, index_type, search_params, recall_at_10, rerank, source_hash, ...
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)


def fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def write_version_files(directory: Path, content: VersionContent) -> dict[str, Any]:
    """Write a version's files into ``directory`` (manifest last); returns the manifest written."""
    import faiss

    rows = content.vectors if isinstance(content.vectors, VectorRows) else VectorRows(content.vectors)
    check_content(content, rows)
    directory.mkdir(parents=True, exist_ok=True)
    if rows.path is None or rows.path.resolve() != (directory / VECTORS_FILE).resolve():
        write_npy(directory / VECTORS_FILE, rows.shape, np.float32, (block for _, block in rows.blocks()))
    faults.point("write.vectors")
    faiss.write_index(content.index, str(directory / FAISS_FILE))
    write_metadata(directory / METADATA_FILE, content.images, content.species, content.failures)
    faults.point("write.metadata")
    np.save(directory / SPECIES_EMBEDDINGS_FILE, np.ascontiguousarray(content.species_embeddings, np.float32))
    files = {}
    present = [name for name in OPTIONAL_FILES if (directory / name).is_file()]
    for name in (*VERSION_FILES, *present):
        fsync_file(directory / name)
        files[name] = {"bytes": (directory / name).stat().st_size, "sha256": sha256_file(directory / name)}
    manifest = {
        "format_version": FORMAT_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "metric": METRIC,
        "count": len(content.images),
        "dim": rows.dim,
        "species_count": len(content.species),
        "failed_count": len(content.failures),
        **content.manifest,
        "files": files,
    }
    faults.point("write.manifest")
    write_atomic(directory / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True), durable=True)
    return manifest


def check_content(content: VersionContent, rows: VectorRows) -> None:
    n = len(content.images)
    if len(rows) != n:
        raise IndexFormatError(f"vectors {rows.shape} do not match {n} images")
    if content.index.ntotal != n:
        raise IndexFormatError(f"FAISS index holds {content.index.ntotal} vectors for {n} images")
    if content.species_embeddings.shape != (len(content.species), rows.dim):
        raise IndexFormatError(
            f"species embeddings {content.species_embeddings.shape} do not match {len(content.species)} species"
        )
    missing = {row.species for row in content.images} - {s.scientific for s in content.species}
    if missing:
        raise IndexFormatError(f"species {sorted(missing)[:5]} have images but no species record")


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
    write_atomic(root / POINTER_FILE, f"{name}\n", durable=True)
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
