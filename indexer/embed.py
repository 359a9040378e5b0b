"""The embedding stage, as reader -> mapper -> writer.

- reader: ``decode_task`` turns one file into a (3, H, W) uint8 array at the model's input size (and
  a thumbnail), in parallel worker processes (a torch DataLoader locally, Ray tasks on a cluster);
  with device decoding on (``DecodeConfig.device_jpeg``), a plain JPEG's bytes go to the main
  process instead and ``birdsearch.indexer.device_decode`` decodes them on the model's device;
- mapper: ``ImageEmbedder`` holds the teacher and turns uint8 batches into unit vectors (bf16 on
  a GPU); it is a callable class, so Ray Data can build it inside each actor;
- writer: ``EmbeddingCache`` saves vectors by content hash in shards as they come, so a killed run
  resumes where it stopped.

``embed_local`` and ``birdsearch.indexer.distributed.embed_ray`` drive the same reader and mapper.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from birdsearch.cpus import available_cpus
from birdsearch.errors import ImageError
from birdsearch.indexer import faults
from birdsearch.indexer.device_decode import DeviceJpegDecoder, jpeg_upright_size
from birdsearch.indexer.images import (
    DEFAULT_MAX_PIXELS,
    SplitPreprocess,
    open_image,
    split_preprocess,
    thumbnail_jpeg,
    to_chw,
)
from birdsearch.workers import die_with_parent

log = logging.getLogger(__name__)

THUMBS_DIR = "thumbs"


@dataclass(frozen=True)
class EmbedTask:
    """One distinct photo to embed."""

    content_hash: str  # sha256 of the bytes the plan saw
    path: str  # local file or stored download


@dataclass(frozen=True)
class DecodeConfig:
    """How workers decode."""

    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse images with more pixels (decompression bombs)
    thumbnail_size: int = 256  # longest side of stored thumbnails; 0: store none
    root: str | None = None  # index root: thumbnails go to ROOT/thumbs/ab/<hash>.jpg
    device_jpeg: bool = False  # plain JPEGs are decoded on the model's device, not in the workers


@dataclass
class Decoded:
    """A worker's answer for one task: pixels, or the reason there are none."""

    content_hash: str
    pixels: np.ndarray | None  # (3, H, W) uint8
    width: int = 0  # upright size of the original
    height: int = 0
    error: str | None = None
    jpeg: np.ndarray | None = None  # the file's bytes, for the device decoder (pixels is then None)
    cpu_seconds: float = 0.0  # the worker's CPU time on this photo (decode, resize, thumbnail)


def thumbnail_relpath(content_hash: str) -> str:
    return f"{THUMBS_DIR}/{content_hash[:2]}/{content_hash}.jpg"


def decode_task(task: EmbedTask, preprocess: SplitPreprocess, config: DecodeConfig) -> Decoded:
    """Read, check, decode and size one photo; every failure becomes a reason, never an exception."""
    import hashlib

    try:
        data = Path(task.path).read_bytes()
    except OSError as e:
        return Decoded(task.content_hash, None, error=f"cannot read file: {e.strerror or e}")
    if hashlib.sha256(data).hexdigest() != task.content_hash:
        return Decoded(task.content_hash, None, error="file changed while indexing (run reindex again)")
    if config.device_jpeg:
        handed_over = for_device(task.content_hash, data, config)
        if handed_over is not None:
            return handed_over
    try:
        img = open_image(data, config.max_pixels)
        pixels = preprocess.to_uint8(img)
    except ImageError as e:
        return Decoded(task.content_hash, None, error=str(e))
    except Exception as e:  # a decoder bug on one odd file must not stop a million-image run
        return Decoded(task.content_hash, None, error=f"decoding failed: {type(e).__name__}: {e}")
    if config.thumbnail_size and config.root:
        save_thumbnail(img, Path(config.root) / thumbnail_relpath(task.content_hash), config.thumbnail_size)
    return Decoded(task.content_hash, pixels, img.width, img.height)


def for_device(content_hash: str, data: bytes, config: DecodeConfig) -> Decoded | None:
    """A plain JPEG's bytes for the device decoder (and its thumbnail, decoded at reduced scale).

    None: not a JPEG the device decodes; the PIL path takes it and names any problem.
    """
    try:
        size = jpeg_upright_size(data, config.max_pixels)
        if size is None:
            return None
        if config.thumbnail_size and config.root:
            target = Path(config.root) / thumbnail_relpath(content_hash)
            if not target.exists():
                img = open_image(data, config.max_pixels, draft=config.thumbnail_size)
                save_thumbnail(img, target, config.thumbnail_size)
    except ImageError as e:
        return Decoded(content_hash, None, error=str(e))
    return Decoded(content_hash, None, size[0], size[1], jpeg=np.frombuffer(data, dtype=np.uint8))


def save_thumbnail(img: Any, target: Path, size: int) -> None:
    """Write a thumbnail once (content-addressed), through a temporary file so a reader never sees half."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    tmp.write_bytes(thumbnail_jpeg(img, size))
    os.replace(tmp, target)


class DecodeDataset:
    """Map-style dataset over tasks for a torch DataLoader (a worker per process)."""

    def __init__(self, tasks: Sequence[EmbedTask], preprocess: SplitPreprocess, config: DecodeConfig):
        self.tasks = list(tasks)
        self.preprocess = preprocess
        self.config = config

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> Decoded:
        started = time.thread_time()
        decoded = decode_task(self.tasks[i], self.preprocess, self.config)
        decoded.cpu_seconds = time.thread_time() - started
        return decoded


@dataclass
class DecodedBatch:
    """Decoded photos stacked for the model, and the ones that failed."""

    hashes: list[str]  # the decoded photos first, then the JPEGs for the device
    pixels: Any  # (B, 3, H, W) uint8 torch tensor, or None when no photo was decoded
    sizes: list[tuple[int, int]]  # (width, height) per hash
    failures: list[tuple[str, str]]  # (content hash, reason)
    jpegs: list[np.ndarray] = field(default_factory=list)  # bytes for the device decoder
    decode_cpu_seconds: float = 0.0  # the workers' CPU time on these photos


def collate(items: list[Decoded]) -> DecodedBatch:
    import torch

    good = [d for d in items if d.pixels is not None]
    jpegs = [d for d in items if d.jpeg is not None]
    pixels = torch.from_numpy(np.stack([d.pixels for d in good])) if good else None
    return DecodedBatch(
        hashes=[d.content_hash for d in good + jpegs],
        pixels=pixels,
        sizes=[(d.width, d.height) for d in good + jpegs],
        failures=[
            (d.content_hash, d.error or "unknown error") for d in items if d.pixels is None and d.jpeg is None
        ],
        jpegs=[d.jpeg for d in jpegs],
        decode_cpu_seconds=sum(d.cpu_seconds for d in items),
    )


def preprocess_from_config(preprocess_cfg: dict[str, Any]) -> SplitPreprocess:
    """The teacher's eval transform rebuilt from its recorded config (no model needed: for workers)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in preprocess_cfg.items()}
    return split_preprocess(image_transform_v2(PreprocessCfg(**cfg), is_train=False))


class ImageEmbedder:
    """The mapper: uint8 pixel batches to unit vectors with the teacher's image tower.

    Built from a spec, so that a Ray actor (or any worker) loads its own copy of the model.
    """

    def __init__(self, teacher_spec: str, device: str = "auto", teacher: Any = None):
        from birdsearch.model.teacher import Teacher

        self.teacher = teacher if teacher is not None else Teacher.load(teacher_spec, device)
        self.split = split_preprocess(self.teacher.preprocess)

    @property
    def device(self) -> Any:
        return self.teacher.device

    def embed(self, pixels: Any) -> np.ndarray:
        """(B, 3, H, W) uint8 tensor -> (B, D) float32 unit vectors."""
        batch = self.split.to_model_input(pixels, self.device)
        return self.teacher.embed_images(batch).numpy()

    def jpeg_decoder(self, max_pixels: int) -> DeviceJpegDecoder:
        """Decodes JPEG bytes on this model's device to its input size (ValueError if its transform
        has steps the device cannot run)."""
        return DeviceJpegDecoder(
            self.split.pil_stage, self.device, lambda data: to_chw(open_image(data, max_pixels))
        )

    def embed_batch(
        self, batch: DecodedBatch, jpeg_decoder: DeviceJpegDecoder | None = None
    ) -> tuple[list[str], np.ndarray, list[tuple[int, int]], list[tuple[str, str]]]:
        """A collated batch to (hashes, vectors, sizes, failures), device-decoding its JPEGs."""
        decoded = 0 if batch.pixels is None else len(batch.pixels)
        hashes, sizes = batch.hashes[:decoded], batch.sizes[:decoded]
        failures = list(batch.failures)
        parts = [self.embed(batch.pixels)] if decoded else []
        if batch.jpegs:
            if jpeg_decoder is None:
                raise ValueError("a batch holds JPEG bytes but no device decoder was given")
            pixels, errors = jpeg_decoder(batch.jpegs)
            kept = [i for i, error in enumerate(errors) if error is None]
            for i, error in enumerate(errors):
                if error is not None:
                    failures.append((batch.hashes[decoded + i], error))
            hashes += [batch.hashes[decoded + i] for i in kept]
            sizes += [batch.sizes[decoded + i] for i in kept]
            if kept:
                parts.append(self.embed(pixels[kept]))
        vectors = np.concatenate(parts) if parts else np.empty((0, self.teacher.dim), dtype=np.float32)
        return hashes, vectors.astype(np.float32), sizes, failures

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data's batch form: {'pixels' (B,3,H,W) uint8, 'ok', ...} -> the same without pixels, with 'vector'."""
        import torch

        pixels = np.asarray(batch["pixels"])
        ok = np.asarray(batch["ok"], dtype=bool)
        dim = self.teacher.dim
        vectors = np.zeros((len(pixels), dim), dtype=np.float32)
        if ok.any():
            vectors[ok] = self.embed(torch.from_numpy(np.ascontiguousarray(pixels[ok])))
        return {**{k: v for k, v in batch.items() if k != "pixels"}, "vector": vectors}


OnBatch = Callable[[list[str], np.ndarray, list[tuple[int, int]], list[tuple[str, str]]], None]


def default_workers() -> int:
    return max(1, min(16, available_cpus()))


def embed_local(
    tasks: Sequence[EmbedTask],
    embedder: ImageEmbedder,
    config: DecodeConfig,
    on_batch: OnBatch,
    batch_size: int = 64,
    workers: int | None = None,
    model_threads: int = 0,
) -> None:
    """Decode in worker processes, embed in this one; ``on_batch(hashes, vectors, sizes, failures)`` per batch.

    On a CPU the model runs on ``model_threads`` torch threads, or (0) on its share of the cores.
    """
    import torch
    from torch.utils.data import DataLoader

    if not tasks:
        return
    workers = default_workers() if workers is None else workers
    jpeg_decoder = embedder.jpeg_decoder(config.max_pixels) if config.device_jpeg else None
    loader = DataLoader(
        DecodeDataset(tasks, embedder.split, config),  # type: ignore[arg-type]
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=embedder.device.type == "cuda",
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        worker_init_fn=functools.partial(die_with_parent, parent=os.getpid()),  # no orphan holds the lock
    )
    on_cpu = embedder.device.type == "cpu"
    sizer = ModelThreads(workers) if on_cpu and workers and not model_threads else None
    with torch_threads_restored():
        if on_cpu and model_threads:
            torch.set_num_threads(model_threads)
        for batch in loader:
            started = time.perf_counter()
            result = embedder.embed_batch(batch, jpeg_decoder)
            if sizer is not None:
                sizer.observe(batch.decode_cpu_seconds, time.perf_counter() - started)
            on_batch(*result)


class ModelThreads:
    """Sizes torch's threads on a CPU so that the decoding workers keep the cores they need.

    Per photo, decoding costs ``d`` CPU seconds in the workers and the model ``m`` in this process;
    both share the cores, so the model should hold the share m / (d + m) of them. More threads
    than that only wait on the workers' cores in each of the model's parallel regions: with a
    small teacher on 2 cores, one thread instead of two indexed more photos per second
    (BENCHMARKS.md, Indexing throughput). A full-size teacher, whose model is nearly all the work,
    keeps every core.
    Costs are smoothed over batches; the count for each batch follows from the ones before it.
    """

    def __init__(self, workers: int, cores: int | None = None, smoothing: float = 0.3):
        self.workers = workers
        self.cores = cores or available_cpus()
        self.smoothing = smoothing
        self.decode_cpu = 0.0  # smoothed CPU seconds per batch, workers
        self.model_cpu = 0.0  # smoothed CPU seconds per batch, model (wall time x threads)

    def observe(self, decode_cpu_seconds: float, model_seconds: float) -> None:
        """Fold in one batch's costs and set torch's thread count for the next batch."""
        import torch

        model_cpu = model_seconds * torch.get_num_threads()
        if self.model_cpu == 0.0:
            self.decode_cpu, self.model_cpu = decode_cpu_seconds, model_cpu
        else:
            a = self.smoothing
            self.decode_cpu += a * (decode_cpu_seconds - self.decode_cpu)
            self.model_cpu += a * (model_cpu - self.model_cpu)
        threads = self.threads()
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)

    def threads(self) -> int:
        total = self.decode_cpu + self.model_cpu
        if total <= 0:
            return self.cores
        decoding = min(self.workers, self.cores * self.decode_cpu / total)  # cores the workers need
        return max(1, self.cores - round(decoding))


@contextmanager
def torch_threads_restored() -> Iterator[None]:
    """Put torch's thread count back afterwards: indexing is also a library call."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def write_file(target: Path, write: Callable[[Any], None]) -> None:
    """Write ``target`` through ``write(file)`` under a temporary name, synced, then renamed into place."""
    tmp = target.with_name(f".tmp-{target.name}")
    with tmp.open("wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


class StoredVectors:
    """The vectors embedding runs saved, by content hash, left in their shards on disk.

    ``gather`` reads the rows it is asked for from the shards' memory-mapped files (a few dozen kept
    open at a time), so a first index of a large gallery never holds its vectors in memory at once.
    """

    OPEN_SHARDS = 64  # memory maps kept open by gather: the blocks it reads walk the shards in order

    def __init__(self, dim: int):
        self.dim = dim
        self.sources: list[Path | np.ndarray] = []  # a shard's vectors file, or its vectors (older shards)
        self.where: dict[str, tuple[int, int]] = {}  # content hash -> (shard, row)
        self.open_shard = functools.lru_cache(maxsize=self.OPEN_SHARDS)(self.read_shard)

    def __contains__(self, content_hash: object) -> bool:
        return content_hash in self.where

    def __len__(self) -> int:
        return len(self.where)

    def add_shard(self, hashes: list[str], source: Path | np.ndarray) -> None:
        shard = len(self.sources)
        self.sources.append(source)
        self.where.update((h, (shard, row)) for row, h in enumerate(hashes))

    def read_shard(self, shard: int) -> np.ndarray:
        source = self.sources[shard]
        return source if isinstance(source, np.ndarray) else np.load(source, mmap_mode="r")

    def gather(self, hashes: Sequence[str]) -> np.ndarray:
        """(len(hashes), dim) float32: the saved vector of each content hash, in that order."""
        out = np.empty((len(hashes), self.dim), dtype=np.float32)
        by_shard: dict[int, tuple[list[int], list[int]]] = {}
        for i, content_hash in enumerate(hashes):
            shard, row = self.where[content_hash]
            at, rows = by_shard.setdefault(shard, ([], []))
            at.append(i)
            rows.append(row)
        for shard, (at, rows) in by_shard.items():
            out[at] = self.open_shard(shard)[rows]
        return out


class EmbeddingCache:
    """Vectors by content hash, saved in shards as they are computed, so that a killed run resumes.

    A shard is two files: ``shard-N-PID.vectors.npy`` (its (n, dim) float32 vectors, memory-mappable)
    and ``shard-N-PID.npz`` (their content hashes and image sizes). Each is written to a temporary name
    and renamed, the vectors first, so a shard whose ``.npz`` exists is whole. Shards written before the
    vectors had a file of their own hold them in the ``.npz``; they are still read.
    """

    def __init__(self, directory: Path, dim: int, checkpoint_every: int = 2048):
        self.directory = directory
        self.dim = dim
        self.checkpoint_every = max(1, checkpoint_every)
        self.pending_hashes: list[str] = []
        self.pending_vectors: list[np.ndarray] = []
        self.pending_sizes: list[tuple[int, int]] = []
        self.shards = len(list(directory.glob("shard-*.npz"))) if directory.is_dir() else 0

    def load(self) -> tuple[StoredVectors, dict[str, tuple[int, int]]]:
        """Everything saved by earlier (possibly killed) runs: where each vector is, and sizes by hash."""
        stored = StoredVectors(self.dim)
        sizes: dict[str, tuple[int, int]] = {}
        if not self.directory.is_dir():
            return stored, sizes
        for shard in sorted(self.directory.glob("shard-*.npz")):
            try:
                source, hashes, shard_sizes = self.read_index(shard)
            except (OSError, ValueError, KeyError) as e:
                log.warning("ignoring unreadable embedding shard %s: %s", shard, e)
                continue
            if source is None:
                continue  # another model's width
            stored.add_shard(hashes, source)
            sizes.update((h, (int(w), int(ht))) for h, (w, ht) in zip(hashes, shard_sizes, strict=True))
        return stored, sizes

    def read_index(self, shard: Path) -> tuple[Path | np.ndarray | None, list[str], np.ndarray]:
        """A shard's vectors (its file, or the array an older shard holds), hashes and sizes."""
        with np.load(shard) as data:
            hashes, sizes = data["hashes"].tolist(), data["sizes"]
            if "vectors" in data.files:
                vectors = data["vectors"]
                return (vectors if vectors.shape[1:] == (self.dim,) else None), hashes, sizes
        path = shard.with_suffix(".vectors.npy")
        shape = np.load(path, mmap_mode="r").shape
        if shape[0] != len(hashes):
            raise ValueError(f"{path.name} holds {shape[0]} vectors for {len(hashes)} hashes")
        return (path if shape[1:] == (self.dim,) else None), hashes, sizes

    def add(self, hashes: list[str], vectors: np.ndarray, sizes: list[tuple[int, int]]) -> None:
        self.pending_hashes += hashes
        self.pending_vectors.append(vectors)
        self.pending_sizes += sizes
        if len(self.pending_hashes) >= self.checkpoint_every:
            self.flush()

    def flush(self) -> None:
        if not self.pending_hashes:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.directory / f"shard-{self.shards:06d}-{os.getpid()}.npz"
        vectors = np.concatenate(self.pending_vectors).astype(np.float32)
        write_file(target.with_suffix(".vectors.npy"), lambda f: np.save(f, vectors))
        write_file(
            target,
            lambda f: np.savez(
                f,
                hashes=np.array(self.pending_hashes),
                sizes=np.array(self.pending_sizes, dtype=np.int64).reshape(-1, 2),
            ),
        )
        self.shards += 1
        self.pending_hashes, self.pending_vectors, self.pending_sizes = [], [], []
        faults.point("embed.shard")

    def clear(self) -> None:
        import shutil

        shutil.rmtree(self.directory, ignore_errors=True)
