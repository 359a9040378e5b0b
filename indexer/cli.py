"""``birdsearch index`` and ``birdsearch reindex``: parse, run the pipeline, print the summary.

``index`` builds (or updates) an index from a gallery; ``reindex`` updates a published index from
the gallery and teacher its manifest records, unless told otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from birdsearch.errors import ConfigError

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    from birdsearch.cli_args import add_model_args

    index = subparsers.add_parser(
        "index",
        help="embed a photo gallery and publish a searchable index version",
        description="Embed a gallery (folder tree <species>/<image> or a CSV/Parquet manifest) with the "
        "teacher's image tower and publish a new index version atomically; unchanged photos are reused.",
    )
    index.add_argument(
        "--gallery", required=True, type=Path, help="folder tree or manifest (.csv/.tsv/.parquet)"
    )
    index.add_argument("--out", required=True, type=Path, help="index root (versions + CURRENT pointer)")
    add_model_args(index, teacher=True, student=False)
    add_run_args(index)
    index.set_defaults(func=run_index_command)

    reindex = subparsers.add_parser(
        "reindex",
        help="update a published index from its gallery (incremental by content hash)",
        description="Re-read the gallery a published index was built from, embed only new or changed "
        "photos, drop removed ones, and publish a new version; the gallery and teacher default to the "
        "published manifest's, and so do the species tables (--taxa). On an index root with nothing "
        "published yet, --gallery (and --teacher, default BIRDSEARCH_TEACHER or BioCLIP-2) build the first "
        "version.",
    )
    reindex.add_argument("--out", "--index", dest="out", required=True, type=Path, help="index root")
    reindex.add_argument(
        "--gallery",
        type=Path,
        default=None,
        help="default: the published version's gallery; required on an empty index root",
    )
    reindex.add_argument(
        "--teacher",
        default=None,
        help="default: the published version's teacher (on an empty root: BIRDSEARCH_TEACHER or BioCLIP-2)",
    )
    reindex.add_argument(
        "--device", default=os.environ.get("BIRDSEARCH_DEVICE", "auto"), help="auto, cpu, cuda or cuda:N"
    )
    add_run_args(reindex)
    reindex.add_argument(
        "--no-taxa",
        action="store_true",
        help="forget the species tables (--taxa) the published version was built with: read the bundled one only",
    )
    reindex.set_defaults(func=run_reindex_command)


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """Options shared by index and reindex."""
    run = parser.add_argument_group("run")
    run.add_argument(
        "--batch-size", type=int, default=None, help="images per forward pass (256 on CUDA, 32 on CPU)"
    )
    run.add_argument(
        "--workers", type=int, default=None, help="decoding processes (default: one per core, ≤16)"
    )
    run.add_argument(
        "--model-threads",
        type=int,
        default=0,
        help="torch threads for the model on a CPU; 0: its share of the cores beside the workers (0)",
    )
    run.add_argument(
        "--taxa",
        action="append",
        type=Path,
        default=[],
        help="species table consulted before the bundled one: the eBird taxonomy CSV, the eBird/Clements "
        "checklist CSV or the IOC master list CSV, as published (repeatable; the first listing a species wins)",
    )
    run.add_argument("--keep", type=int, default=3, help="versions to keep, the published one included (3)")
    run.add_argument("--full", action="store_true", help="embed every photo again instead of reusing vectors")
    run.add_argument("--force", action="store_true", help="publish a new version even if nothing changed")
    run.add_argument("--max-pixels", type=int, default=100_000_000, help="refuse larger images (100,000,000)")
    run.add_argument("--thumbnail-size", type=int, default=256, help="thumbnail longest side; 0: none (256)")
    run.add_argument(
        "--jpeg-decode",
        default="auto",
        choices=("auto", "device", "workers"),
        help="where JPEGs are decoded: on the model's device (nvJPEG on a GPU), in the decoding "
        "workers (PIL), or auto: the device on CUDA",
    )
    run.add_argument(
        "--checkpoint-every", type=int, default=2048, help="images per saved embedding shard (2048)"
    )
    run.add_argument("--refresh-urls", action="store_true", help="download URL sources again")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    faiss = parser.add_argument_group("index type")
    faiss.add_argument("--index-type", default="auto", choices=("auto", "flat", "hnsw", "ivf", "ivfpq"))
    faiss.add_argument(
        "--exact-max", type=int, default=250_000, help="largest gallery searched exactly (250,000)"
    )
    faiss.add_argument(
        "--memory-budget-gb", type=float, default=16.0,
        help="RAM the index and its build may use (16); decides the index type under --index-type auto",
    )  # fmt: skip
    faiss.add_argument("--target-recall", type=float, default=0.95, help="recall@10 to tune for (0.95)")
    faiss.add_argument(
        "--storage", default="auto", choices=("auto", "float32", "float16", "sq8"),
        help="how vectors are stored: the codes of a flat, HNSW or IVF index, or the re-rank store of an IVF-PQ "
        "one; auto: the most precise codes that fit the budget, an 8-bit re-rank store (see docs/indexing.md)",
    )  # fmt: skip
    faiss.add_argument(
        "--tune-audio", type=Path, default=None, metavar="NPY",
        help="(Q, D) distilled audio embeddings to tune efSearch/nprobe on, beside the species text embeddings",
    )  # fmt: skip
    ray = parser.add_argument_group("distributed")
    ray.add_argument("--runner", default="local", choices=("local", "ray"), help="embedding stage runner")
    ray.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    ray.add_argument(
        "--ray-actors", type=int, default=1, help="embedding actors (one GPU each where present)"
    )


def build_config(args: argparse.Namespace, gallery: Path, teacher: str, taxa: list[Path]) -> Any:
    from birdsearch.indexer.faiss_index import IndexOptions
    from birdsearch.indexer.pipeline import IndexConfig

    for name in ("keep", "checkpoint_every", "ray_actors"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return IndexConfig(
        gallery=gallery,
        out=args.out,
        teacher=teacher,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        model_threads=args.model_threads,
        keep=args.keep,
        incremental=not args.full,
        force=args.force,
        max_pixels=args.max_pixels,
        thumbnail_size=args.thumbnail_size,
        jpeg_decode=args.jpeg_decode,
        checkpoint_every=args.checkpoint_every,
        refresh_urls=args.refresh_urls,
        runner=args.runner,
        ray_address=args.ray_address,
        ray_actors=args.ray_actors,
        taxa=tuple(taxa),
        index=IndexOptions(
            index_type=args.index_type,
            exact_max=args.exact_max,
            memory_budget_bytes=int(args.memory_budget_gb * 1024**3),
            target_recall=args.target_recall,
            storage=args.storage,
        ),
        tune_audio=args.tune_audio,
        progress=not args.no_progress and sys.stderr.isatty(),
    )


def run_index_command(args: argparse.Namespace) -> int:
    from birdsearch.indexer.pipeline import run_index

    summary = run_index(build_config(args, args.gallery, args.teacher, args.taxa))
    sys.stdout.write(summary.render() + "\n")
    return 0 if summary.version else 1


def run_reindex_command(args: argparse.Namespace) -> int:
    from birdsearch.indexer.pipeline import run_index

    gallery, teacher, taxa = reindex_sources(args)
    summary = run_index(build_config(args, gallery, teacher, taxa))
    sys.stdout.write(summary.render() + "\n")
    return 0 if summary.version else 1


def reindex_sources(args: argparse.Namespace) -> tuple[Path, str, list[Path]]:
    """The gallery, teacher and species tables a reindex reads: the flags, else the published manifest's.

    An index root with nothing published yet (a fresh volume) gets its first version from
    ``--gallery``, so that one scheduled command both creates and maintains an index.
    """
    from birdsearch.indexer.store import IndexRoot
    from birdsearch.model.hub import DEFAULT_TEACHER

    root = IndexRoot(args.out)
    if root.current_name() is None:
        if args.gallery is None:
            raise ConfigError(
                f"nothing is published in {args.out} yet, so there is no gallery to reindex: "
                "pass --gallery GALLERY to build the first version"
            )
        teacher = args.teacher or os.environ.get("BIRDSEARCH_TEACHER", DEFAULT_TEACHER)
        log.info("no published index in %s: building the first version from %s", args.out, args.gallery)
        return args.gallery, teacher, args.taxa
    manifest = root.open_current().manifest
    gallery = args.gallery or Path(manifest.get("gallery", {}).get("location", ""))
    if not str(gallery) or not gallery.exists():
        raise ConfigError(f"the gallery {gallery} recorded in {args.out}'s manifest is gone: pass --gallery")
    return gallery, args.teacher or manifest["teacher"]["id"], recorded_taxa(args, manifest)


def recorded_taxa(args: argparse.Namespace, manifest: dict[str, Any]) -> list[Path]:
    """``--taxa``, else the species tables the published version was built with (none with ``--no-taxa``).

    Remembered so that a scheduled reindex resolves names, common names and lineages as the first
    index did, instead of silently falling back to the bundled table.
    """
    if args.no_taxa:
        if args.taxa:
            raise ConfigError("--taxa and --no-taxa contradict each other: pass one of them")
        return []
    if args.taxa:
        return args.taxa
    tables = [Path(path) for path in manifest.get("taxa", [])]
    gone = [str(path) for path in tables if not path.is_file()]
    if gone:
        raise ConfigError(
            f"the species table(s) {', '.join(gone)} recorded in {args.out}'s manifest are gone: pass --taxa "
            "FILE for each table to read instead, or --no-taxa to use only the bundled table"
        )
    if tables:
        log.info("species tables from the published version: %s", ", ".join(map(str, tables)))
    return tables
