"""An indexing run, from gallery to published version: lock, list, hash, embed, assemble, build, publish.

Incremental by content hash: an image whose bytes the published version already embedded (with
the same teacher) is reused without running the model; vectors computed by a run that was killed
are picked up from the embedding cache; unchanged galleries publish nothing. See ``store`` for the
layout and ``writer`` for the atomic publish.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from birdsearch.errors import ConfigError, IndexFormatError, StorageError
from birdsearch.files import disk_full
from birdsearch.indexer.device_decode import device_resize
from birdsearch.indexer.embed import (
    DecodeConfig,
    EmbeddingCache,
    EmbedTask,
    ImageEmbedder,
    StoredVectors,
    embed_local,
    thumbnail_relpath,
)
from birdsearch.indexer.faiss_index import BuiltIndex, IndexOptions, build_index
from birdsearch.indexer.fetch import BLOBS_DIR, Hashed, PreviousRecord, hash_items
from birdsearch.indexer.gallery import Gallery, read_gallery
from birdsearch.indexer.images import DEFAULT_MAX_PIXELS
from birdsearch.indexer.lock import IndexLock
from birdsearch.indexer.store import (
    BLOCK_ROWS,
    VECTORS_FILE,
    ImageRow,
    IndexRoot,
    IndexVersion,
    SpeciesRecord,
    VectorRows,
    referenced_files,
    write_npy,
)
from birdsearch.indexer.taxonomy import TaxonomyResolver
from birdsearch.indexer.writer import (
    VersionContent,
    new_staging_dir,
    prune_versions,
    publish,
    remove_unpublished,
    write_version_files,
)

log = logging.getLogger(__name__)

WORK_DIR = ".work"


@dataclass
class IndexConfig:
    """One indexing run."""

    gallery: Path  # folder tree or manifest (CSV/TSV/Parquet)
    out: Path  # index root
    teacher: str  # teacher spec: 'hf-hub:imageomics/bioclip-2', 'local-dir:/path', 'toy'
    device: str = "auto"  # where the image tower runs
    batch_size: int | None = None  # images per forward pass (default: 256 on CUDA, 32 on CPU)
    workers: int | None = None  # decoding processes (default: one per CPU core, at most 16)
    model_threads: int = 0  # torch threads on a CPU; 0: the model's share of the cores (ModelThreads)
    keep: int = 3  # versions kept, the published one included
    incremental: bool = True  # reuse the published version's vectors for unchanged images
    force: bool = False  # publish a new version even when nothing changed
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are refused (decompression bombs)
    thumbnail_size: int = 256  # longest side of stored thumbnails; 0 stores none
    jpeg_decode: str = "auto"  # 'device' (nvJPEG on a GPU), 'workers' (PIL), 'auto': device on CUDA
    checkpoint_every: int = 2048  # images per saved embedding shard (what a killed run can lose)
    hash_threads: int = 8  # threads hashing files and fetching URLs
    refresh_urls: bool = False  # re-download URL sources the published version already holds
    runner: str = "local"  # 'local' (DataLoader workers) or 'ray' (Ray Data actor pool)
    ray_address: str | None = None  # Ray cluster to join ('auto', 'ray://...'); None starts a local one
    ray_actors: int = 1  # embedding actors (one GPU each where GPUs exist)
    index: IndexOptions = field(default_factory=IndexOptions)  # index type choice and tuning
    taxa: tuple[Path, ...] = ()  # world checklists (eBird, Clements, IOC) read before the bundled table
    tune_audio: Path | None = None  # .npy of distilled audio embeddings, tuned on beside the species texts
    species_format: str = "taxon_com"  # species name format for the text embeddings
    species_templates: str = "openai"  # template set averaged for the text embeddings
    progress: bool = True  # progress bars on stderr


@dataclass
class Summary:
    """What a run did."""

    root: Path
    version: str | None  # the published version after the run
    published: bool  # False when nothing changed (or nothing could be indexed)
    count: int = 0  # images in the version
    added: int = 0  # keys new since the previous version
    removed: int = 0  # keys gone since the previous version
    changed: int = 0  # keys whose bytes changed
    unchanged: int = 0  # keys reused as they were
    embedded: int = 0  # distinct photos run through the model in this run
    resumed: int = 0  # vectors recovered from an interrupted run's cache
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    index_type: str = ""
    recall_at_10: float | None = None
    seconds: float = 0.0
    embed_seconds: float = 0.0
    jpeg_decode: str = "workers"  # where this run decoded JPEGs: 'device' or 'workers'

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def render(self) -> str:
        """A human summary: counts, then failures grouped by reason with examples."""
        state = (
            f"published {self.version}"
            if self.published
            else f"nothing new; {self.version or 'no version'} stays published"
        )
        lines = [
            f"{state} in {self.root} ({self.count} images, index {self.index_type or '-'}"
            + (f", recall@10 {self.recall_at_10:.3f}" if self.recall_at_10 is not None else "")
            + ")",
            f"  added {self.added}, removed {self.removed}, changed {self.changed}, unchanged {self.unchanged}, "
            f"failed {len(self.failed)}",
            f"  embedded {self.embedded} photos ({self.images_per_second:.1f}/s), {self.resumed} resumed from an "
            f"interrupted run; {self.seconds:.1f} s in all",
        ]
        by_reason: dict[str, list[str]] = {}
        for key, reason in self.failed:
            by_reason.setdefault(reason, []).append(key)
        for reason, keys in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            lines.append(f"  failed ({len(keys)}): {reason}: {', '.join(keys[:3])}{more}")
        return "\n".join(lines)


@dataclass
class Previous:
    """The published version, when its vectors can be reused (same teacher weights and preprocessing)."""

    version: IndexVersion
    records: dict[str, PreviousRecord]  # by key
    rows_by_hash: dict[str, tuple[int, int, int, str | None]]  # hash -> (row, width, height, thumbnail)


def run_index(config: IndexConfig) -> Summary:
    """Index a gallery into ``config.out`` and publish a new version when anything changed."""
    start = time.perf_counter()
    if config.model_threads < 0:
        raise ConfigError(
            f"model_threads (--model-threads) must be 0 (sized automatically) or more, got {config.model_threads}"
        )
    root = Path(config.out).expanduser()
    with IndexLock(root), full_disk_reported(root):
        remove_unpublished(root)
        gallery = read_gallery(config.gallery)
        log.info(
            "gallery %s: %d items (%d skipped)", gallery.location, len(gallery.items), len(gallery.skipped)
        )
        published = open_published(root)
        teacher = TeacherOnDemand(config.teacher, config.device, published.teacher if published else None)
        previous = load_previous(published, teacher.description, config.incremental)
        hashed = hash_items(
            gallery.items,
            root,
            previous.records if previous else {},
            config.hash_threads,
            config.refresh_urls,
            config.progress,
        )
        summary = Summary(root, IndexRoot(root).current_name(), published=False)
        vectors, sizes, hash_failures = embed_new(root, config, teacher, hashed, previous, summary)
        assembled = assemble(
            config, gallery, hashed, previous, vectors, sizes, hash_failures, teacher, summary
        )
        if assembled is None:
            summary.seconds = time.perf_counter() - start
            return summary
        staging, content = assembled
        write_version_files(staging, content)
        summary.version = publish(root, staging)
        summary.published = True
        prune_versions(root, config.keep)
        collect_garbage(root)
        clear_work(root)
    summary.seconds = time.perf_counter() - start
    return summary


@contextmanager
def full_disk_reported(root: Path) -> Iterator[None]:
    """A disk that fills up mid-run: the unpublished version's files removed, and a StorageError that
    says what is safe (the published version) and how to go on (free space; the run resumes)."""
    try:
        yield
    except Exception as e:
        if not disk_full(e):
            raise
        remove_unpublished(root)
        current = IndexRoot(root).current_name()
        published = f"the published version {current} is untouched" if current else "nothing was published"
        detail = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise StorageError(
            f"the disk holding {root} is full ({detail}): the new version was not published and its "
            f"partial files are removed; {published}. Free space there (or give the index a larger volume) "
            f"and run again: it resumes from the embeddings saved so far"
        ) from e


class TeacherOnDemand:
    """The teacher's description at once; its model only when a photo or a species name needs it."""

    def __init__(self, spec: str, device: str, recorded: dict[str, Any] | None):
        from birdsearch.model.teacher import recorded_description

        self.spec, self.device = spec, device
        self._embedder: ImageEmbedder | None = None
        known = recorded_description(spec, recorded) if recorded else None
        self.description = known if known is not None else self.embedder.teacher.describe()

    @property
    def embedder(self) -> ImageEmbedder:
        if self._embedder is None:
            self._embedder = ImageEmbedder(self.spec, self.device)
        return self._embedder

    @property
    def dim(self) -> int:
        return int(self.description["dim"])


def open_published(root: Path) -> IndexVersion | None:
    """The published version, or None (with the reason logged when one exists but cannot be read)."""
    index_root = IndexRoot(root)
    if index_root.current_name() is None:
        return None
    try:
        return index_root.open_current()
    except IndexFormatError as e:
        log.warning("the published version cannot be read (%s); embedding everything again", e)
        return None


def load_previous(
    version: IndexVersion | None, teacher: dict[str, Any], incremental: bool
) -> Previous | None:
    """The published version as a source of reusable vectors, or None."""
    if version is None:
        return None
    keys = ("weights_sha256", "dim", "preprocess")
    if any(version.teacher.get(k) != teacher.get(k) for k in keys):
        log.info(
            "the published version was built by another teacher (%s); embedding everything",
            version.teacher["id"],
        )
        return previous_keys_only(version)
    if not incremental:
        return previous_keys_only(version)
    records: dict[str, PreviousRecord] = {}
    rows_by_hash: dict[str, tuple[int, int, int, str | None]] = {}
    for image in version.stored_images():
        records[image.key] = PreviousRecord(image.content_hash, image.size_bytes, image.mtime_ns, image.blob)
        rows_by_hash.setdefault(image.content_hash, (image.id, image.width, image.height, image.thumbnail))
    return Previous(version, records, rows_by_hash)


def previous_keys_only(version: IndexVersion) -> Previous:
    """The previous version for counting added/removed only: nothing of it is reused."""
    records = {key: PreviousRecord(h, None, None, None) for key, h in version.key_hashes()}
    return Previous(version, records, {})


def cache_dir(root: Path, teacher: dict[str, Any]) -> Path:
    """Embedding shards live under a directory named for the teacher, so no run mixes two models' vectors."""
    ident = hashlib.sha256(f"{teacher['weights_sha256']}|{teacher['preprocess']}".encode()).hexdigest()[:16]
    return root / WORK_DIR / f"embeddings-{ident}"


def clear_work(root: Path) -> None:
    import shutil

    shutil.rmtree(root / WORK_DIR, ignore_errors=True)


def decode_on_device(config: IndexConfig, embedder: ImageEmbedder) -> bool:
    """Whether plain JPEGs are decoded on the model's device (``jpeg_decode``; 'auto': on CUDA, locally)."""
    if config.jpeg_decode not in ("auto", "device", "workers"):
        raise ConfigError(f"unknown jpeg_decode {config.jpeg_decode!r}: use 'auto', 'device' or 'workers'")
    if config.jpeg_decode == "workers":
        return False
    reason = None
    if config.runner != "local":
        reason = "the Ray runner decodes in its CPU tasks"
    elif device_resize(embedder.split.pil_stage) is None:
        reason = f"the teacher's transform has steps the device cannot run: {embedder.split.pil_stage}"
    if config.jpeg_decode == "device":
        if reason:
            raise ConfigError(f"--jpeg-decode device is not available: {reason}")
        return True
    if reason is None and embedder.device.type == "cuda":
        log.info("decoding JPEGs on %s (nvJPEG)", embedder.device)
        return True
    return False


def embed_new(
    root: Path,
    config: IndexConfig,
    teacher: TeacherOnDemand,
    hashed: list[Hashed],
    previous: Previous | None,
    summary: Summary,
) -> tuple[StoredVectors, dict[str, tuple[int, int]], dict[str, str]]:
    """Embed every distinct photo that neither the previous version nor an interrupted run holds.

    Returns where the embedded vectors are saved (this run's and an interrupted run's, on disk), the
    photos' sizes, and the photos that failed, with the reason.
    """
    from tqdm.auto import tqdm

    cache = EmbeddingCache(cache_dir(root, teacher.description), teacher.dim, config.checkpoint_every)
    vectors, sizes = cache.load()
    known = previous.rows_by_hash if previous else {}
    tasks: dict[str, EmbedTask] = {}
    for h in hashed:
        if h.content_hash and h.content_hash not in known and h.content_hash not in tasks:
            if h.content_hash in vectors:
                summary.resumed += 1
                continue
            tasks[h.content_hash] = EmbedTask(h.content_hash, str(h.file))
    failures: dict[str, str] = {}
    if not tasks:
        return vectors, sizes, failures
    embedder = teacher.embedder
    bar = tqdm(total=len(tasks), desc="embedding", unit="img", disable=not config.progress)

    def on_batch(hashes: list[str], batch: np.ndarray, batch_sizes: list, batch_failures: list) -> None:
        failures.update(batch_failures)
        cache.add(hashes, batch, batch_sizes)
        summary.embedded += len(hashes)
        bar.update(len(hashes) + len(batch_failures))

    decode = DecodeConfig(
        config.max_pixels, config.thumbnail_size, str(root), device_jpeg=decode_on_device(config, embedder)
    )
    summary.jpeg_decode = "device" if decode.device_jpeg else "workers"
    batch_size = config.batch_size or (256 if embedder.device.type == "cuda" else 32)
    started = time.perf_counter()
    if config.runner == "ray":
        from birdsearch.indexer.distributed import embed_ray

        embed_ray(list(tasks.values()), config, teacher.description, decode, on_batch, batch_size)
    elif config.runner == "local":
        embed_local(
            list(tasks.values()), embedder, decode, on_batch, batch_size, config.workers, config.model_threads
        )
    else:
        raise ConfigError(f"unknown runner {config.runner!r}: use 'local' or 'ray'")
    cache.flush()
    bar.close()
    summary.embed_seconds = time.perf_counter() - started
    vectors, sizes = cache.load()  # now with this run's shards
    return vectors, sizes, failures


@dataclass
class Collected:
    """The new version's rows, in gallery-key order, with their vectors and each species' taxonomy."""

    rows: list[ImageRow] = field(default_factory=list)
    # Where row i's vector is: an int is its row in the previous version, a str the content hash
    # of a vector embedded in this run. Gathered only when a version is written (write_gathered_vectors).
    sources: list[int | str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    taxa: dict[str, SpeciesRecord] = field(default_factory=dict)  # lineage from the first image naming it

    def source_hash(self) -> str:
        """What the version is made of (keys, bytes, species): equal hashes mean nothing to publish."""
        text = "".join(f"{r.key}\t{r.content_hash}\t{r.species}\n" for r in self.rows)
        return hashlib.sha256(text.encode()).hexdigest()


def assemble(
    config: IndexConfig,
    gallery: Gallery,
    hashed: list[Hashed],
    previous: Previous | None,
    new_vectors: StoredVectors,
    sizes: dict[str, tuple[int, int]],
    embed_failures: dict[str, str],
    teacher: TeacherOnDemand,
    summary: Summary,
) -> tuple[Path, VersionContent] | None:
    """The new version's rows (sorted by key), vectors, species and index; None when nothing changed.

    The vectors are streamed to a new staging directory's vectors.npy and the index is built from
    that file block by block (with IVF-PQ's re-rank store beside it), so a large gallery is never in
    memory at once; returns that directory and what is left to write into it.
    """
    collected = collect_rows(config, gallery, hashed, previous, new_vectors, sizes, embed_failures)
    summary.failed = collected.failures
    count_changes(summary, previous, hashed, {r.key for r in collected.rows})
    summary.count = len(collected.rows)
    if not collected.rows:
        log.error("no image of %s could be indexed; nothing is published", gallery.location)
        return None
    source_hash = collected.source_hash()
    if unchanged_since(previous, source_hash, config.force):
        assert previous is not None
        summary.index_type = previous.version.index_type
        summary.recall_at_10 = previous.version.manifest.get("recall_at_10")
        return None
    staging = new_staging_dir(Path(config.out).expanduser())
    vectors = write_gathered_vectors(staging / VECTORS_FILE, collected, previous, new_vectors, teacher.dim)
    species = species_records(collected)
    species_vectors = species_embeddings(teacher, species, previous, config)
    built = build_index(vectors, config.index, tuning_queries(species_vectors, config), staging)
    summary.index_type, summary.recall_at_10 = built.plan.description, built.recall_at_10
    manifest = version_manifest(config, gallery, teacher.description, built, source_hash, previous, summary)
    return staging, VersionContent(
        vectors, collected.rows, species, species_vectors, built.index, manifest, collected.failures
    )


def collect_rows(
    config: IndexConfig,
    gallery: Gallery,
    hashed: list[Hashed],
    previous: Previous | None,
    new_vectors: StoredVectors,
    sizes: dict[str, tuple[int, int]],
    embed_failures: dict[str, str],
) -> Collected:
    """One row per hashed item that has a vector (reused or new); failures for the others."""
    collected = Collected(failures=list(gallery.skipped))
    resolver = TaxonomyResolver(config.taxa)
    known = previous.rows_by_hash if previous else {}
    for h in hashed:
        reason = (
            (h.error or "unknown error") if h.content_hash is None else embed_failures.get(h.content_hash)
        )
        if reason is not None:
            collected.failures.append((h.item.key, reason))
            continue
        assert h.content_hash is not None
        if h.content_hash in known:
            row_id, width, height, thumb = known[h.content_hash]
            collected.sources.append(row_id)
        else:
            width, height = sizes[h.content_hash]
            collected.sources.append(h.content_hash)
            thumb = thumbnail_relpath(h.content_hash) if config.thumbnail_size else None
        if thumb and not (Path(config.out) / thumb).is_file():
            thumb = None
        taxon = resolver.resolve(h.item.label, h.item.given)
        collected.taxa.setdefault(taxon.scientific, taxon)
        collected.rows.append(image_row(h, taxon, width, height, thumb))
    return collected


def tuning_queries(species_vectors: np.ndarray, config: IndexConfig) -> dict[str, np.ndarray]:
    """The queries an approximate index is tuned on: species text embeddings, distilled audio if given."""
    queries = {"species_text": species_vectors}
    if config.tune_audio is not None:
        queries["audio"] = load_tuning_audio(Path(config.tune_audio), species_vectors.shape[1])
    return queries


def load_tuning_audio(path: Path, dim: int) -> np.ndarray:
    """(Q, dim) distilled audio embeddings from a .npy file, checked and L2-normalised."""
    try:
        queries = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the tuning audio embeddings {path}: {e}") from e
    if queries.ndim != 2 or queries.shape[1] != dim or not len(queries):
        raise ConfigError(
            f"{path} holds an array of shape {queries.shape}; expected (Q, {dim}): distilled audio embeddings "
            f"of recordings, in the index teacher's space"
        )
    queries = queries.astype(np.float32)
    return queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)


def write_gathered_vectors(
    path: Path, collected: Collected, previous: Previous | None, new_vectors: StoredVectors, dim: int
) -> VectorRows:
    """Write the new version's (N, dim) vectors.npy block by block: reused rows read from the previous
    version's file (each run of consecutive rows in one read), new ones from this run's shards."""
    sources = collected.sources
    old = VectorRows(previous.version.path / VECTORS_FILE) if previous is not None else None

    def blocks() -> Iterator[np.ndarray]:
        for start in range(0, len(sources), BLOCK_ROWS):
            chunk = sources[start : start + BLOCK_ROWS]
            block = np.empty((len(chunk), dim), dtype=np.float32)
            reused = [(i, s) for i, s in enumerate(chunk) if isinstance(s, int)]
            if reused:
                assert old is not None
                at, rows = (np.asarray(column, dtype=np.int64) for column in zip(*reused, strict=True))
                block[at] = old.take(rows)
            new = [(i, s) for i, s in enumerate(chunk) if isinstance(s, str)]
            if new:
                at, hashes = zip(*new, strict=True)
                block[list(at)] = new_vectors.gather(hashes)
            yield block

    write_npy(path, (len(sources), dim), np.float32, blocks())
    return VectorRows(path)


def unchanged_since(previous: Previous | None, source_hash: str, force: bool) -> bool:
    """True when the published version, reusable as it is, holds exactly these images."""
    return bool(
        previous
        and previous.rows_by_hash
        and not force
        and previous.version.manifest.get("source_hash") == source_hash
    )


def version_manifest(
    config: IndexConfig,
    gallery: Gallery,
    teacher: dict[str, Any],
    built: BuiltIndex,
    source_hash: str,
    previous: Previous | None,
    summary: Summary,
) -> dict[str, Any]:
    """The manifest's facts about this build (the writer adds counts, files and checksums)."""
    return {
        "teacher": teacher,
        **built.manifest(config.index.memory_budget_bytes),  # index_type, search_params, recall, rerank, ...
        "source_hash": source_hash,
        "gallery": {
            "kind": gallery.kind,
            "location": str(gallery.location),
            "manifest_sha256": gallery.manifest_sha256,
        },
        "taxa": [
            str(Path(path).expanduser().resolve()) for path in config.taxa
        ],  # a reindex reads them again
        "species_text": {"format": config.species_format, "templates": config.species_templates},
        "thumbnail_size": config.thumbnail_size,
        "build": {
            "added": summary.added,
            "removed": summary.removed,
            "changed": summary.changed,
            "unchanged": summary.unchanged,
            "embedded": summary.embedded,
            "index_build_seconds": round(built.build_seconds, 3),
            "max_pixels": config.max_pixels,
            "jpeg_decode": summary.jpeg_decode,  # of the photos embedded in this run
            "previous": previous.version.name if previous else None,
        },
    }


def image_row(h: Hashed, taxon: SpeciesRecord, width: int, height: int, thumbnail: str | None) -> ImageRow:
    item = h.item
    return ImageRow(
        key=item.key,
        species=taxon.scientific,
        width=int(width),
        height=int(height),
        content_hash=str(h.content_hash),
        path=item.path,
        url=item.url,
        common=taxon.common,
        genus=taxon.genus,
        family=taxon.family,
        order=taxon.order,
        license=item.license,
        attribution=item.attribution,
        source=item.source,
        thumbnail=thumbnail,
        blob=h.blob,
        size_bytes=h.size_bytes,
        mtime_ns=h.mtime_ns,
    )


def count_changes(
    summary: Summary, previous: Previous | None, hashed: list[Hashed], indexed: set[str]
) -> None:
    old = previous.records if previous else {}
    new_hash = {h.item.key: h.content_hash for h in hashed if h.item.key in indexed}
    summary.added = sum(1 for key in new_hash if key not in old)
    summary.removed = sum(1 for key in old if key not in new_hash)
    summary.changed = sum(1 for key, h in new_hash.items() if key in old and old[key].content_hash != h)
    summary.unchanged = sum(1 for key, h in new_hash.items() if key in old and old[key].content_hash == h)


def species_records(collected: Collected) -> list[SpeciesRecord]:
    """One record per species (sorted by name), lineage from the first image that names it."""
    counts = Counter(r.species for r in collected.rows)
    return [replace(collected.taxa[name], image_count=counts[name]) for name in sorted(counts)]


def species_text(record: SpeciesRecord, name_format: str) -> str | None:
    """The name the teacher's text tower reads, or None for a label that is not a binomial."""
    try:
        return record.taxon().name(name_format)
    except ConfigError:
        return None


def species_embeddings(
    teacher: TeacherOnDemand, species: list[SpeciesRecord], previous: Previous | None, config: IndexConfig
) -> np.ndarray:
    """(S, D) text embeddings, reusing the previous version's rows for species whose text is unchanged."""
    import torch.nn.functional as F

    from birdsearch.model.names import templates_for

    reusable: dict[str, np.ndarray] = {}
    same_text = previous is not None and previous.version.manifest.get("species_text") == {
        "format": config.species_format,
        "templates": config.species_templates,
    }
    if previous is not None and previous.rows_by_hash and same_text:
        old_names, old_vectors = previous.version.species_embeddings()
        old_records = {s.scientific: s for s in previous.version.species()}
        for name, vector in zip(old_names, old_vectors, strict=True):
            if name in old_records:
                reusable[species_text(old_records[name], config.species_format) or name] = vector
    texts = [species_text(s, config.species_format) or s.scientific for s in species]
    missing = sorted({t for t in texts if t not in reusable})
    if missing:
        templates = templates_for(config.species_templates)
        prompts = [template.format(text) for text in missing for template in templates]
        per_prompt = teacher.embedder.teacher.embed_texts(prompts).view(len(missing), len(templates), -1)
        fresh = F.normalize(per_prompt.mean(dim=1), dim=-1).numpy()
        reusable.update(zip(missing, fresh, strict=True))
    dim = teacher.dim
    return (
        np.stack([reusable[t] for t in texts]).astype(np.float32) if texts else np.empty((0, dim), np.float32)
    )


def collect_garbage(root: Path) -> None:
    """Delete thumbnails and downloads that no kept version refers to."""
    referenced: set[str] = set()
    for name in IndexRoot(root).versions():
        try:
            referenced |= referenced_files(root / name)
        except IndexFormatError as e:  # an unreadable version keeps every file: never delete on doubt
            log.warning("not collecting garbage: %s", e)
            return
    for folder in ("thumbs", BLOBS_DIR):
        for file in (root / folder).rglob("*") if (root / folder).is_dir() else []:
            if file.is_file() and file.relative_to(root).as_posix() not in referenced:
                file.unlink(missing_ok=True)
