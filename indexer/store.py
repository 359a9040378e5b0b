"""An index on disk: a root holding versions, a pointer to the published one, and their contents.

This module owns the layout and the metadata database (file names, schema, writes and reads);
``writer`` writes a version's files through it and publishes, ``pipeline`` uses its API.

On disk::

    ROOT/
      CURRENT                 the published version's name ("v0007\\n"), replaced atomically
      v0006/ v0007/           complete version directories (the last N are kept)
      thumbs/ab/<hash>.jpg    thumbnails, content-addressed, shared by versions
      blobs/ab/<hash>.<ext>   originals fetched from URLs, content-addressed
      .lock .work/ .staging/  the writer's lock, resumable embedding cache, versions being written

    ROOT/v0007/
      manifest.json           format version, teacher, dim, metric, count, index type, checksums, ...
      vectors.npy             (N, D) float32 unit vectors; row i is image id i
      index.faiss             the FAISS index over the same vectors (ids = rows)
      rerank.npy              only beside a compressed (IVF-PQ) index: (N, D) float16 or 8-bit codes
      rerank_range.npy        of the vectors, that re-rank its shortlist; for 8-bit codes, (2, D) float32:
                              each component's low end and step
      metadata.sqlite         images, species (taxonomy, counts), failures
      species_embeddings.npy  (S, D) teacher text embeddings of the gallery's species

A version directory appears under its final name only once complete, and ``CURRENT`` moves to it
only after it validates, so a reader that opens ``CURRENT`` never sees a half-written index.
Image ids are dense (0..N-1) within a version, in the order of the gallery keys; the content hash
is the key that stays the same across versions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import astuple, dataclass, field, fields
from functools import cached_property
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from birdsearch.errors import BirdsearchError, IndexFormatError
from birdsearch.model.names import Taxon

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
POINTER_FILE = "CURRENT"
MANIFEST_FILE = "manifest.json"
VECTORS_FILE = "vectors.npy"
FAISS_FILE = "index.faiss"
METADATA_FILE = "metadata.sqlite"
SPECIES_EMBEDDINGS_FILE = "species_embeddings.npy"
RERANK_FILE = "rerank.npy"
RERANK_RANGE_FILE = "rerank_range.npy"
VERSION_FILES = (VECTORS_FILE, FAISS_FILE, METADATA_FILE, SPECIES_EMBEDDINGS_FILE)
OPTIONAL_FILES = (RERANK_FILE, RERANK_RANGE_FILE)  # written by the index types that need them
# Rows per block when vectors are streamed from or to disk: 96 MiB of 768-d float32.
BLOCK_ROWS = 1 << 15
# Scattered rows gathered through one short-lived memory map: at most ~64 MiB of pages mapped at once.
GATHER_ROWS = 1 << 13
VERSION_PREFIX = "v"
METRIC = "inner_product"


class UnknownImageError(BirdsearchError, KeyError):
    """An image id that this index version does not hold."""

    code = "unknown_image"
    http_status = 404

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ImageRecord:
    """One indexed photo and what is known about it."""

    id: int  # row in vectors.npy and the FAISS id, dense within a version
    key: str  # gallery key: path relative to the gallery root, or the URL
    path: str | None  # local file (absolute at build time), None for URL sources
    url: str | None  # where a URL source was fetched from
    species: str  # scientific name as resolved (or the gallery's label when unresolved)
    common: str
    genus: str
    family: str
    order: str
    license: str
    attribution: str
    source: str  # the photo's page or origin, as the gallery gave it
    width: int  # upright (after EXIF orientation), in pixels
    height: int
    content_hash: str  # sha256 of the file's bytes
    thumbnail: str | None = field(default=None, repr=False)  # relative to the index root
    blob: str | None = field(default=None, repr=False)  # stored original, relative to the index root


@dataclass
class ImageRow:
    """One image as a version is written (its id is its position in the list written)."""

    key: str
    species: str
    width: int
    height: int
    content_hash: str
    path: str | None = None
    url: str | None = None
    common: str = ""
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


@dataclass(frozen=True)
class SpeciesRecord(Taxon):
    """One species in the gallery: a ``Taxon`` (same fields) with its image count and provenance.

    Unlike a plain ``Taxon`` it may hold a gallery label that is not a binomial: such a label is
    indexed as it is (unresolved); ``taxon()`` gives the checked ``Taxon`` the text tower needs.
    """

    image_count: int = 0
    resolved_by: str = "unknown"  # 'manifest', 'table', 'genus' or 'unknown': where the taxonomy came from
    code: str = ""  # eBird species code ("amerob"), "" where no species table gave one

    def __post_init__(self) -> None:
        # No binomial check and no derived genus: the resolver sets every rank of a gallery label,
        # and an unresolved one ("American Robin" not in the table) must not get genus "American".
        pass

    def taxon(self) -> Taxon:
        """This species as a checked ``Taxon`` (raises ConfigError for a label that is not a binomial)."""
        return Taxon(
            self.scientific, self.common, self.kingdom, self.phylum, self.klass, self.order, self.family,
            self.genus,
        )  # fmt: skip


class StoredImage(NamedTuple):
    """What a reindex needs of an image the published version holds, to reuse it unread.

    A named tuple: a reindex reads one per image, and it builds several times faster than a dataclass.
    """

    id: int
    key: str
    content_hash: str
    size_bytes: int | None
    mtime_ns: int | None
    blob: str | None
    width: int
    height: int
    thumbnail: str | None


# The metadata's schema. SQL reserves ORDER and CLASS, so those two columns are order_name and
# class; everything outside this module sees the record fields (``order``, ``klass``).
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
    code TEXT NOT NULL DEFAULT '',   -- eBird species code, '' where unknown
    embedding_row INTEGER NOT NULL   -- row in species_embeddings.npy
);
CREATE TABLE failures (key TEXT NOT NULL, reason TEXT NOT NULL);
"""
# Columns in the order of the record fields (ImageRecord, SpeciesRecord, StoredImage, ImageRow).
IMAGE_COLUMNS = (
    "id, key, path, url, species, common_name, genus, family, order_name, license, attribution, source, "
    "width, height, content_hash, thumbnail, blob"
)
SPECIES_COLUMNS = "scientific, common_name, kingdom, phylum, class, order_name, family, genus, image_count, resolved_by, code"
STORED_IMAGE_COLUMNS = "id, key, content_hash, size_bytes, mtime_ns, blob, width, height, thumbnail"
IMAGE_ROW_COLUMNS = (
    "key, species, width, height, content_hash, path, url, common_name, genus, family, order_name, license, "
    "attribution, source, thumbnail, blob, size_bytes, mtime_ns"
)
TAXON_FILTER_COLUMNS = {"genus": "genus", "family": "family", "order": "order_name"}


def write_metadata(
    path: Path, images: list[ImageRow], species: list[SpeciesRecord], failures: list[tuple[str, str]]
) -> None:
    """Write a version's ``metadata.sqlite``: images (id = position), species (row = position), failures."""
    if path.exists():
        path.unlink()
    conn = sqlite3.connect(path)
    try:
        conn.executescript(SCHEMA)
        image_fields = attrgetter(
            *(f.name for f in fields(ImageRow))
        )  # astuple deep-copies: slow at 10M rows
        marks = ",".join("?" * (1 + len(fields(ImageRow))))
        conn.executemany(
            f"INSERT INTO images (id, {IMAGE_ROW_COLUMNS}) VALUES ({marks})",
            ((i, *image_fields(row)) for i, row in enumerate(images)),
        )
        marks = ",".join("?" * (1 + len(fields(SpeciesRecord))))
        conn.executemany(
            f"INSERT INTO species ({SPECIES_COLUMNS}, embedding_row) VALUES ({marks})",
            ((*astuple(record), row) for row, record in enumerate(species)),
        )
        conn.executemany("INSERT INTO failures VALUES (?, ?)", failures)
        conn.commit()
    finally:
        conn.close()


def referenced_files(version_dir: Path) -> set[str]:
    """Thumbnails and stored originals (relative to the index root) a version refers to.

    Opens only the version's metadata, so it works on versions too old or damaged to open whole;
    raises IndexFormatError when even that cannot be read.
    """
    file = version_dir / METADATA_FILE
    try:
        conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return {p for pair in conn.execute("SELECT thumbnail, blob FROM images") for p in pair if p}
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise IndexFormatError(f"cannot read {file}: {e}") from e


class IndexRoot:
    """A directory holding index versions and the pointer to the published one."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"IndexRoot({str(self.path)!r})"

    @property
    def pointer(self) -> Path:
        return self.path / POINTER_FILE

    def current_name(self) -> str | None:
        """The published version's name, or None; one small file read (cheap enough to poll)."""
        try:
            name = self.pointer.read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return name or None

    def versions(self) -> list[str]:
        """Names of the complete version directories, oldest first."""
        if not self.path.is_dir():
            return []
        names = [p.name for p in self.path.iterdir() if is_version_name(p.name) and p.is_dir()]
        return sorted(names, key=version_number)

    def open(self, name: str, **kwargs: Any) -> IndexVersion:
        """Open one version by name; keyword arguments go to ``IndexVersion``."""
        if not is_version_name(name):
            raise IndexFormatError(
                f"{name!r} is not an index version name (expected e.g. 'v0001') in {self.path}"
            )
        return IndexVersion(self.path / name, **kwargs)

    def open_current(self, **kwargs: Any) -> IndexVersion:
        """Open the published version; raises IndexFormatError saying what to run when there is none."""
        name = self.current_name()
        if name is None:
            hint = "it does not exist" if not self.path.exists() else f"it has no {POINTER_FILE} pointer"
            raise IndexFormatError(
                f"no published index in {self.path} ({hint}): build one with "
                f"'birdsearch index --gallery GALLERY --out {self.path}'"
            )
        return self.open(name, **kwargs)


def is_version_name(name: str) -> bool:
    return name.startswith(VERSION_PREFIX) and name[len(VERSION_PREFIX) :].isdigit()


def version_number(name: str) -> int:
    return int(name[len(VERSION_PREFIX) :])


def version_name(number: int) -> str:
    return f"{VERSION_PREFIX}{number:04d}"


class IndexVersion:
    """One complete, validated index version, ready for concurrent searches.

    Args:
        path: the version directory.
        device: where searches run: 'cpu' (CPU FAISS), 'cuda' or 'cuda:N'.
        backend: 'auto', 'faiss', 'faiss-gpu' or 'torch' (see ``birdsearch.indexer.search``).
    """

    def __init__(self, path: str | Path, device: str = "cpu", backend: str = "auto"):
        self.path = Path(path)
        self.root = self.path.parent
        self.manifest = read_manifest(self.path)
        self.check_files()
        self._vectors = self.load_vectors()
        self._local = threading.local()
        self._species_cache: list[SpeciesRecord] | None = None
        self.check_metadata()
        from birdsearch.indexer.search import make_searcher

        self.searcher = make_searcher(
            self.load_faiss,
            self._vectors,
            self.manifest.get("search_params") or {},
            backend,
            device,
            self.load_rerank_store(),
        )

    def __repr__(self) -> str:
        return f"IndexVersion({self.name!r}, count={self.count}, dim={self.dim}, type={self.index_type!r})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def index_type(self) -> str:
        return str(self.manifest["index_type"])

    @property
    def teacher(self) -> dict[str, Any]:
        return dict(self.manifest["teacher"])

    # -- loading and validation -------------------------------------------------------------

    def check_files(self) -> None:
        """Every file the manifest lists is present with its recorded size."""
        for name, facts in (self.manifest.get("files") or {}).items():
            file = self.path / name
            if not file.is_file():
                raise IndexFormatError(f"index version {self.path} is incomplete: {name} is missing")
            if file.stat().st_size != facts["bytes"]:
                raise IndexFormatError(
                    f"index version {self.path}: {name} is {file.stat().st_size} bytes, the manifest says "
                    f"{facts['bytes']}; the version is damaged, rebuild it with 'birdsearch reindex'"
                )

    def load_vectors(self) -> np.ndarray:
        try:
            vectors = np.load(self.path / VECTORS_FILE, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise IndexFormatError(f"cannot read {self.path / VECTORS_FILE}: {e}") from e
        if vectors.shape != (self.count, self.dim) or vectors.dtype != np.float32:
            raise IndexFormatError(
                f"{self.path / VECTORS_FILE} holds {vectors.dtype} {vectors.shape}; the manifest says "
                f"float32 ({self.count}, {self.dim})"
            )
        return vectors

    def load_faiss(self) -> Any:
        """The FAISS index, memory-mapped where FAISS can (see ``read_faiss``)."""
        index = read_faiss(self.path / FAISS_FILE)
        if index.ntotal != self.count or index.d != self.dim:
            raise IndexFormatError(
                f"{self.path / FAISS_FILE} holds {index.ntotal} vectors of dim {index.d}; the manifest says "
                f"{self.count} of dim {self.dim}"
            )
        return index

    def load_rerank_store(self) -> Any:
        """The store a compressed index re-ranks its shortlist from (``manifest['rerank']``), or None."""
        from birdsearch.indexer.search import STORE_ENCODINGS, RerankStore

        encoding = (self.manifest.get("rerank") or {}).get("encoding")
        if encoding is None:
            return None
        if encoding not in STORE_ENCODINGS:
            raise IndexFormatError(f"{self.path / MANIFEST_FILE}: unknown re-rank encoding {encoding!r}")
        rows = VectorRows(self.path / (VECTORS_FILE if encoding == "float32" else RERANK_FILE))
        if rows.shape != (self.count, self.dim) or rows.dtype != np.dtype(STORE_ENCODINGS[encoding]):
            raise IndexFormatError(
                f"{rows.path} holds {rows.dtype} {rows.shape}; a {encoding} re-rank store of ({self.count}, {self.dim}) "
                "was expected: the version is damaged, rebuild it with 'birdsearch reindex'"
            )
        if encoding != "sq8":
            return RerankStore(rows)
        low, step = np.load(self.path / RERANK_RANGE_FILE)
        return RerankStore(rows, low, step)

    def check_metadata(self) -> None:
        rows = self.db().execute("SELECT COUNT(*), COALESCE(MAX(id), -1) FROM images").fetchone()
        if rows[0] != self.count or rows[1] != self.count - 1:
            raise IndexFormatError(
                f"{self.path / METADATA_FILE} lists {rows[0]} images (max id {rows[1]}); the manifest says {self.count}"
            )

    def db(self) -> sqlite3.Connection:
        """This thread's read-only connection to the metadata (SQLite connections are per thread)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            uri = f"{(self.path / METADATA_FILE).resolve().as_uri()}?mode=ro&immutable=1"
            try:
                conn = sqlite3.connect(uri, uri=True)
                conn.execute("SELECT 1 FROM images LIMIT 1")
            except sqlite3.DatabaseError as e:
                raise IndexFormatError(f"cannot read {self.path / METADATA_FILE}: {e}") from e
            self._local.conn = conn
        return conn

    # -- search -------------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int, ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest images by inner product (cosine on unit vectors).

        Args:
            queries: (Q, D) float32 unit vectors in the teacher's space (a (D,) vector is one query).
            k: neighbours per query.
            ids: optional image ids to restrict the search to (taxon filters, see ``ids_for``).

        Returns:
            scores (Q, k) float32 and ids (Q, k) int64, best first; -inf and -1 where fewer than k exist.
        """
        from birdsearch.errors import ConfigError
        from birdsearch.indexer.search import check_ids, check_queries

        if int(k) < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        q = check_queries(queries, self.dim)
        return self.searcher.search(q, int(k), check_ids(ids, self.count))

    def vectors(self) -> np.ndarray:
        """All image vectors, (N, D) float32, row i = image id i (read-only memory map)."""
        return self._vectors

    # -- metadata -----------------------------------------------------------------------------

    def images(self, ids: Any) -> list[ImageRecord]:
        """Records for ``ids``, in the order given; raises UnknownImageError for an id not in this version."""
        wanted = [int(i) for i in np.asarray(ids, dtype=np.int64).ravel()]
        found: dict[int, ImageRecord] = {}
        unique = sorted(set(wanted))
        for start in range(0, len(unique), 900):  # SQLite's bound-parameter limit
            chunk = unique[start : start + 900]
            marks = ",".join("?" * len(chunk))
            for row in self.db().execute(f"SELECT {IMAGE_COLUMNS} FROM images WHERE id IN ({marks})", chunk):
                found[row[0]] = ImageRecord(*row)
        missing = [i for i in unique if i not in found]
        if missing:
            raise UnknownImageError(
                f"image id {missing[0]} is not in index version {self.name} (0..{self.count - 1})"
            )
        return [found[i] for i in wanted]

    def image(self, image_id: int) -> ImageRecord:
        return self.images([image_id])[0]

    def ids_for_hash(self, content_hash: str) -> np.ndarray:
        """Ids of the images with this content hash (the key that is stable across versions)."""
        rows = self.db().execute("SELECT id FROM images WHERE content_hash = ? ORDER BY id", (content_hash,))
        return np.array([r[0] for r in rows], dtype=np.int64)

    def image_file(self, image_id: int) -> Path:
        """The photo file to serve: the stored original for URL sources, else the gallery file."""
        record = self.image(image_id)
        path = self.root / record.blob if record.blob else Path(record.path or "")
        if not path.is_file():
            raise UnknownImageError(f"the file of image {image_id} ({record.key}) is no longer at {path}")
        return path

    def thumbnail_file(self, image_id: int, size: int | None = None) -> Path:
        """The stored JPEG thumbnail (longest side ``manifest['thumbnail_size']``), or the original if none.

        ``size`` is accepted for callers that ask for one; the single stored size is returned.
        """
        record = self.image(image_id)
        if record.thumbnail and (self.root / record.thumbnail).is_file():
            return self.root / record.thumbnail
        return self.image_file(image_id)

    def species(self) -> list[SpeciesRecord]:
        """Every species in this version, by scientific name, with lineage and image count."""
        if self._species_cache is None:
            columns = SPECIES_COLUMNS
            stored = {row[1] for row in self.db().execute("PRAGMA table_info(species)")}
            if "code" not in stored:  # written before species codes were kept: every code is unknown
                columns = columns.replace(", code", ", '' AS code")
            rows = self.db().execute(f"SELECT {columns} FROM species ORDER BY scientific")
            self._species_cache = [SpeciesRecord(*row) for row in rows]
        return list(self._species_cache)

    @cached_property
    def _species_embeddings(self) -> tuple[list[str], np.ndarray]:
        names = [r[0] for r in self.db().execute("SELECT scientific FROM species ORDER BY embedding_row")]
        embeddings = np.load(self.path / SPECIES_EMBEDDINGS_FILE)
        if embeddings.shape != (len(names), self.dim):
            raise IndexFormatError(
                f"{self.path / SPECIES_EMBEDDINGS_FILE} is {embeddings.shape}; expected ({len(names)}, {self.dim})"
            )
        return names, embeddings.astype(np.float32, copy=False)

    def species_embeddings(self) -> tuple[list[str], np.ndarray]:
        """(scientific names, (S, D) float32): teacher text embeddings of the gallery's species.

        Built with the name format and templates in ``manifest['species_text']`` (taxon_com, openai).
        """
        names, embeddings = self._species_embeddings
        return list(names), embeddings

    def ids_for(
        self,
        species: str | list[str] | None = None,
        genus: str | None = None,
        family: str | None = None,
        order: str | None = None,
    ) -> np.ndarray:
        """Sorted image ids matching every filter given (case-insensitive); all ids when none is."""
        clauses: list[str] = []
        params: list[str] = []
        if species is not None:
            names = [species] if isinstance(species, str) else list(species)
            if not names:
                return np.empty(0, dtype=np.int64)
            clauses.append(f"species IN ({','.join('?' * len(names))})")
            params += names
        for rank, value in (("genus", genus), ("family", family), ("order", order)):
            if value is not None:
                clauses.append(f"{TAXON_FILTER_COLUMNS[rank]} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.db().execute(f"SELECT id FROM images {where} ORDER BY id", params)
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def failures(self) -> list[tuple[str, str]]:
        """(gallery key, reason) for every file the build skipped."""
        return list(self.db().execute("SELECT key, reason FROM failures ORDER BY key"))

    def stored_images(self) -> Iterator[StoredImage]:
        """Every image's reuse facts (hash, size, mtime, blob, size in pixels, thumbnail), by id."""
        rows = self.db().execute(f"SELECT {STORED_IMAGE_COLUMNS} FROM images ORDER BY id")
        yield from map(StoredImage._make, rows)

    def key_hashes(self) -> Iterator[tuple[str, str]]:
        """(gallery key, content hash) of every image."""
        yield from self.db().execute("SELECT key, content_hash FROM images")

    def validate(self, deep: bool = False) -> None:
        """Check the version: files, shapes, metadata, a self-search; ``deep`` also checks every sha256."""
        self.load_faiss()
        if deep:
            for name, facts in (self.manifest.get("files") or {}).items():
                if sha256_file(self.path / name) != facts["sha256"]:
                    raise IndexFormatError(f"{self.path / name} does not match its checksum in the manifest")
        if self.count:
            # Each probe should find itself (or a duplicate as close) among its 10 best. An index
            # whose ids do not match the rows fails nearly every probe; an approximate one (8-bit
            # codes among near-duplicates) may miss one, so 3 in 4 must pass.
            probe = np.asarray(self._vectors[: min(8, self.count)], dtype=np.float32)
            _, found = self.search(probe, 10)
            scores = np.einsum("ijd,id->ij", np.asarray(self._vectors[np.maximum(found, 0)]), probe)
            own = np.einsum("ij,ij->i", probe, probe)
            passed = ((scores >= own[:, None] - 1e-3) & (found >= 0)).any(axis=1)
            if passed.mean() < 0.75:
                raise IndexFormatError(f"index version {self.path} fails its self-search check")


def read_faiss(file: Path) -> Any:
    """Read a FAISS index with its codes memory-mapped (``IO_FLAG_MMAP_IFC``), else into RAM.

    Mapped, the index's vectors (and an HNSW graph) are file pages the kernel can share and evict,
    not the process's own memory: a hot reload opens the new version without a second private copy
    of the vectors, and only the pages that searches touch become resident. FAISS builds since 1.9
    map Flat, scalar-quantised, HNSW and IVF indexes this way; an older FAISS, or a type it cannot
    map, reads the index into RAM as before (logged once per file).
    """
    import faiss

    flag = getattr(faiss, "IO_FLAG_MMAP_IFC", None)
    if flag is not None:
        try:
            return faiss.read_index(str(file), flag)
        except RuntimeError as e:
            log.info("%s cannot be memory-mapped (%s); reading it into RAM", file, str(e).splitlines()[0])
    try:
        return faiss.read_index(str(file))
    except RuntimeError as e:
        raise IndexFormatError(f"cannot read FAISS index {file}: {e}") from e


class VectorRows:
    """(N, D) vectors read by blocks or by row ids: an array in memory, or a .npy file on disk.

    A file's blocks are read with plain reads (``pread``), not through a memory map: a pass over a
    30 GB file through a map would leave every page it touched in the process's resident set, so a
    build that streams the gallery's vectors holds one block of them, never the file. Scattered rows
    (``take``) go through short-lived maps, closed before they return.
    """

    def __init__(self, source: np.ndarray | str | Path):
        self.path: Path | None = None
        self.array: np.ndarray | None = None
        if isinstance(source, np.ndarray):
            if source.ndim != 2:
                raise IndexFormatError(f"vectors must be (N, D), got shape {source.shape}")
            self.array, self.shape, self.dtype = source, source.shape, source.dtype
            return
        self.path = Path(source)
        try:
            with self.path.open("rb") as f:
                version = np.lib.format.read_magic(f)
                readers = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }
                if version not in readers:
                    raise ValueError(f".npy format version {version} is not read here")
                shape, fortran, dtype = readers[version](f)
                self.offset = f.tell()
        except (OSError, ValueError) as e:
            raise IndexFormatError(f"cannot read {self.path}: {e}") from e
        if fortran or len(shape) != 2:
            raise IndexFormatError(f"{self.path} holds an array of shape {shape}; expected (N, D) in C order")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        size = self.path.stat().st_size
        if size < self.offset + int(np.prod(self.shape)) * self.dtype.itemsize:
            raise IndexFormatError(f"{self.path} is truncated: {size} bytes for {self.dtype} {self.shape}")
        self.fd = os.open(self.path, os.O_RDONLY)  # pread keeps no offset: safe for concurrent readers

    def __del__(self) -> None:
        fd = getattr(self, "fd", None)
        if fd is not None:
            os.close(fd)

    def __len__(self) -> int:
        return int(self.shape[0])

    @property
    def dim(self) -> int:
        return int(self.shape[1])

    def block(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a C-contiguous float32 array of the process's own."""
        stop = min(stop, len(self))
        if self.array is not None:
            return np.ascontiguousarray(self.array[start:stop], dtype=np.float32)
        out = np.empty((max(0, stop - start), self.dim), dtype=self.dtype)
        buffer = memoryview(out).cast("B")
        at, done = self.offset + start * self.dim * self.dtype.itemsize, 0
        while done < len(buffer):  # one read returns at most 2 GiB on Linux
            got = os.preadv(self.fd, [buffer[done : done + (1 << 30)]], at + done)
            if got == 0:
                raise IndexFormatError(f"{self.path} was cut short while rows {start}..{stop} were read")
            done += got
        return out.astype(np.float32, copy=False)

    def blocks(self, rows: int = BLOCK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, block) over every row, in order."""
        for start in range(0, len(self), rows):
            yield start, self.block(start, start + rows)

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` (any order, repeats allowed) as float32.

        From a file, through a memory map opened for each GATHER_ROWS ids and closed after: scattered
        rows are gathered at the speed of page faults (a re-ranked search reads hundreds), and the
        pages they touched leave the process's resident set with the map (the page cache keeps them).
        """
        ids = np.asarray(ids, dtype=np.int64)
        if self.array is not None:
            return np.asarray(self.array[ids], dtype=np.float32)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexFormatError(f"rows {ids.min()}..{ids.max()} are outside {self.path}'s {len(self)}")
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for start in range(0, len(ids), GATHER_ROWS):
            rows = np.memmap(self.path, self.dtype, "r", self.offset, self.shape)  # type: ignore[arg-type]
            out[start : start + GATHER_ROWS] = rows[ids[start : start + GATHER_ROWS]]
            del rows  # unmapped here
        return out


def write_npy(path: Path, shape: tuple[int, int], dtype: Any, blocks: Iterable[np.ndarray]) -> None:
    """Write an (N, D) .npy file from row blocks with plain writes (no memory map), checking the count."""
    dtype = np.dtype(dtype)
    written = 0
    with path.open("wb") as f:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
        np.lib.format.write_array_header_2_0(f, header)
        for block in blocks:
            block = np.ascontiguousarray(block, dtype=dtype)
            if block.ndim != 2 or block.shape[1] != shape[1]:
                raise IndexFormatError(
                    f"a block of shape {block.shape} does not fit {path}'s rows of {shape[1]}"
                )
            f.write(memoryview(block).cast("B"))
            written += len(block)
        f.flush()
        os.fsync(f.fileno())
    if written != shape[0]:
        raise IndexFormatError(f"{path}: {written} rows written for a shape of {shape}")


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in 4 MiB blocks (the manifest's checksums)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: Path) -> dict[str, Any]:
    """The version's manifest, checked for the fields readers rely on and a supported format version."""
    file = path / MANIFEST_FILE
    if not path.is_dir():
        raise IndexFormatError(f"index version directory {path} does not exist")
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError as e:
        raise IndexFormatError(f"{file} is missing: {path} is not a complete index version") from e
    except ValueError as e:
        raise IndexFormatError(f"{file} is not valid JSON: {e}") from e
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{file} has format_version {version!r}; this birdsearch reads format {FORMAT_VERSION}: rebuild the "
            f"index with 'birdsearch index' (or use the birdsearch release that wrote it)"
        )
    missing = [k for k in ("teacher", "dim", "metric", "count", "index_type", "files") if k not in manifest]
    if missing:
        raise IndexFormatError(f"{file} lacks {', '.join(missing)}")
    if manifest["metric"] != METRIC:
        raise IndexFormatError(f"{file}: metric {manifest['metric']!r} is not {METRIC!r}")
    return manifest
