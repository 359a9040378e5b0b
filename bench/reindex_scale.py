"""A reindex that finds nothing new, over a gallery of many unchanged photo files.

A reindex lists the gallery, opens the published version, and takes each local file's content hash
from that version when the file's size and modification time are the ones recorded (as rsync does);
only a file whose size or mtime differ is read and hashed. This bench times that no-op reindex.

    python bench/reindex_scale.py                     # 100,000 files, BioCLIP-2's architecture
    python bench/reindex_scale.py --files 2000 --teacher tiny    # quick

The files are tiny (distinct 64-byte contents: hashing them would be cheap, so the figure is the
reindex's own overhead: listing, stat, reading the previous version's records, comparing). The
published version they are checked against is written by the pipeline's own functions with random
vectors, as if the teacher had embedded them (embedding 100,000 photos is not what is measured).
The teacher is BioCLIP-2's full-size architecture with random weights (1.7 GB on disk) by default:
a reindex that embeds nothing must not build it, and the bench also times one load of it
(``teacher_load_s``), which is what such a reindex spent before it stopped loading the model.
Everything, the checksum cache included, is written under a temporary folder and deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("reindex_scale")

SPECIES = [
    "Turdus_migratorius",
    "Junco_hyemalis",
    "Passer_domesticus",
    "Sayornis_nigricans",
    "Spinus_psaltria",
]


def make_files(gallery: Path, count: int) -> None:
    """``count`` distinct 64-byte files spread over species folders, 1,000 per subfolder."""
    for i in range(count):
        folder = gallery / SPECIES[i % len(SPECIES)] / f"part{i // 1000:04d}"
        if i % 1000 == 0 or not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"photo{i:07d}.jpg").write_bytes(f"{i:064d}".encode())


def publish_as_indexed(gallery: Path, root: Path, teacher: str) -> tuple[Any, float]:
    """Publish a version holding every gallery file (random vectors), through the pipeline's functions."""
    from birdsearch.indexer.embed import EmbeddingCache, ImageEmbedder
    from birdsearch.indexer.faiss_index import build_index
    from birdsearch.indexer.fetch import hash_items
    from birdsearch.indexer.gallery import read_gallery
    from birdsearch.indexer.pipeline import (
        IndexConfig,
        Summary,
        collect_rows,
        species_records,
        tuning_queries,
        version_manifest,
        write_gathered_vectors,
    )
    from birdsearch.indexer.store import VECTORS_FILE
    from birdsearch.indexer.writer import VersionContent, new_staging_dir, publish, write_version_files

    config = IndexConfig(gallery=gallery, out=root, teacher=teacher, device="cpu", workers=0, progress=False)
    embedder = ImageEmbedder(teacher, "cpu")
    listed = read_gallery(gallery)
    started = time.perf_counter()
    hashed = hash_items(listed.items, root, {}, config.hash_threads)
    first_hash_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    dim = embedder.teacher.dim
    hashes = list(dict.fromkeys(h.content_hash for h in hashed))
    random = rng.standard_normal((len(hashes), dim)).astype(np.float32)
    cache = EmbeddingCache(
        root / ".bench-vectors", dim, checkpoint_every=len(hashes)
    )  # as an embedding run saves them
    cache.add(hashes, random / np.linalg.norm(random, axis=1, keepdims=True), [(1, 1)] * len(hashes))
    cache.flush()
    vectors, sizes = cache.load()
    collected = collect_rows(config, listed, hashed, None, vectors, sizes, {})
    species = species_records(collected)
    text = rng.standard_normal((len(species), dim)).astype(np.float32)
    staging = new_staging_dir(root)
    matrix = write_gathered_vectors(staging / VECTORS_FILE, collected, None, vectors, dim)
    built = build_index(matrix, config.index, tuning_queries(text, config), staging)
    manifest = version_manifest(
        config,
        listed,
        embedder.teacher.describe(),
        built,
        collected.source_hash(),
        None,
        Summary(root, None, False),
    )
    content = VersionContent(matrix, collected.rows, species, text, built.index, manifest, collected.failures)
    write_version_files(staging, content)
    return publish(root, staging), first_hash_s


def save_teacher(kind: str, directory: Path) -> Path:
    """A teacher in open_clip's on-disk format: BioCLIP-2's architecture, or a tiny one."""
    from birdsearch.model import standins

    if kind == "full":
        return standins.save_random_full_teacher(directory)
    cfg = standins.TINY_TEACHER_CFG
    return standins.save_teacher(standins.build_teacher(cfg, seed=0), directory, cfg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument(
        "--teacher", choices=["tiny", "full"], default="full",
        help="the teacher the version was built with: BioCLIP-2's full-size architecture (ViT-L/14, "
        "random weights, 1.7 GB on disk) or a tiny one",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from birdsearch.indexer.pipeline import IndexConfig, run_index
    from birdsearch.model.teacher import Teacher

    work = Path(tempfile.mkdtemp(prefix="reindex-scale-", dir=args.work))
    os.environ["BIRDSEARCH_CACHE"] = str(work / "cache")  # the teacher's checksum is cached here, not in ~
    try:
        teacher = f"local-dir:{save_teacher(args.teacher, work / 'teacher')}"
        gallery, root = work / "gallery", work / "index"
        started = time.perf_counter()
        make_files(gallery, args.files)
        log.info("%d files written in %.1f s", args.files, time.perf_counter() - started)
        version, first_hash_s = publish_as_indexed(gallery, root, teacher)
        log.info("published %s (hashing every file the first time: %.1f s)", version, first_hash_s)
        config = IndexConfig(
            gallery=gallery, out=root, teacher=teacher, device="cpu", workers=0, progress=False
        )
        started = time.perf_counter()
        summary = run_index(config)
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        Teacher.load(teacher, "cpu").describe()  # what a no-op reindex spent before it stopped loading it
        teacher_load_s = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "files": args.files,
        "teacher": args.teacher,
        "reindex_s": round(seconds, 2),
        "teacher_load_s": round(teacher_load_s, 2),
        "first_hash_s": round(first_hash_s, 2),
        "published": summary.published,
        "unchanged": summary.unchanged,
        "embedded": summary.embedded,
    }
    sys.stdout.write(json.dumps(result) + "\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    ok = not summary.published and summary.unchanged == args.files and summary.embedded == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
