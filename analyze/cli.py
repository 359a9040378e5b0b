"""``birdsearch analyze INPUT... --out DIR``: folders of recordings to detection tables."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from birdsearch.cli_args import add_model_args


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="analyse files and folders of recordings into detection tables (CSV, Raven, Audacity, JSONL)",
        description="Analyse recordings in-process: the models and the index load once, windows of many "
        "files share forward passes. Each window's species scoring at least --min-conf are detections, each "
        "with the best photo of its species. Per-recording files and one combined table per run go to --out; "
        "a rerun with the same settings skips what is done; recordings that fail are listed in "
        "failures.csv and the run goes on.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="recording files, folders (searched "
                        "recursively) or glob patterns (quote them: 'cards/**/*.WAV')")  # fmt: skip
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument(
        "--index-root", type=Path, help="index root (default: BIRDSEARCH_INDEX_ROOT or the cache's)"
    )
    parser.add_argument("--checkpoint", default=os.environ.get("BIRDSEARCH_CHECKPOINT", ""),
                        help="distilled encoder folder (default: BIRDSEARCH_CHECKPOINT; none: the cascade)")  # fmt: skip
    parser.add_argument("--mode", choices=("auto", "distilled", "cascade"), default="auto",
                        help="auto: distilled when a checkpoint is given, else the cascade")  # fmt: skip
    add_model_args(parser, teacher=False)  # --student (the cascade's) and --device
    parser.add_argument("--format", default="csv,raven,audacity,jsonl",
                        help="comma-separated: csv, raven, audacity, jsonl (default: %(default)s)")  # fmt: skip
    parser.add_argument("--min-conf", type=float, default=0.1,
                        help="keep species whose calibrated confidence in a window is at least this (0..1; "
                        "default: %(default)s); without a calibration for the mode, the raw pooled cosine score")  # fmt: skip
    parser.add_argument("--calibration", default=os.environ.get("BIRDSEARCH_CALIBRATION", ""),
                        help="calibration file (default: BIRDSEARCH_CALIBRATION, else calibration.json beside "
                        "the encoder or in the index root)")  # fmt: skip
    parser.add_argument(
        "--species-k", type=int, default=5, help="at most this many species a window (default: %(default)s)"
    )
    parser.add_argument("--species-list", type=Path,
                        help="only these species: scientific names or BirdNET 'Scientific_Common' lines")  # fmt: skip
    parser.add_argument("--strict", action="store_true", dest="strict_species_list",
                        help="stop when the species list names species the index lacks (default: skip them, "
                        "with a warning that gives the nearest names)")  # fmt: skip
    parser.add_argument("--species-rule", default=os.environ.get("BIRDSEARCH_SPECIES_RULE"),
                        help="how a species' photos pool into its window score: best, mean-top:M, kth:Q or "
                        "lme:T (default: BIRDSEARCH_SPECIES_RULE, else the service's default)")  # fmt: skip
    parser.add_argument("--window-s", type=float, help="window length, seconds (default: the model's)")
    parser.add_argument("--hop-s", type=float, help="hop between windows, seconds (default: the window)")
    parser.add_argument(
        "--batch-size", type=int, default=0, help="windows per forward pass (0: 64 on a GPU, 8 on a CPU)"
    )
    parser.add_argument("--workers", type=int, default=0, help="decoding threads (0: the usable cores)")
    parser.add_argument("--max-duration-s", type=float, default=3600.0,
                        help="longer recordings are listed as failures (default: %(default)s)")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    runners = parser.add_argument_group("runners (default: this process)")
    runners.add_argument("--url", default="", help="send the recordings to the query service at URL ('birdsearch "
                         "serve') instead of loading models here; --workers uploads in flight (0: 4)")  # fmt: skip
    runners.add_argument("--runner", default="local", choices=("local", "ray"),
                         help="ray: decoding and the model on Ray Data across machines (needs the distributed extra)")  # fmt: skip
    runners.add_argument(
        "--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)"
    )
    runners.add_argument(
        "--ray-actors", type=int, default=1, help="model actors on Ray (one GPU each where present)"
    )
    parser.set_defaults(func=run_analyze)


def run_analyze(args: argparse.Namespace) -> int:
    from birdsearch.analyze.config import AnalyzeConfig
    from birdsearch.analyze.formats import parse_formats
    from birdsearch.analyze.run import analyze
    from birdsearch.engine.config import default_index_root

    index_root = args.index_root or Path(os.environ.get("BIRDSEARCH_INDEX_ROOT") or default_index_root())
    config = AnalyzeConfig(
        inputs=args.inputs,
        out=args.out,
        index_root=index_root,
        checkpoint=args.checkpoint,
        student=args.student,
        mode=args.mode,
        device=args.device,
        formats=tuple(parse_formats(args.format)),
        min_conf=args.min_conf,
        calibration=args.calibration,
        species_k=args.species_k,
        window_s=args.window_s,
        hop_s=args.hop_s,
        species_list=args.species_list,
        strict_species_list=args.strict_species_list,
        **({"species_rule": args.species_rule} if args.species_rule else {}),
        batch_size=args.batch_size,
        workers=args.workers,
        max_duration_s=args.max_duration_s,
        progress=not args.no_progress and not args.quiet,
        url=args.url,
        runner=args.runner,
        ray_address=args.ray_address,
        ray_actors=args.ray_actors,
    )
    analyze(config)
    return 0  # failed recordings are listed in failures.csv; they never fail the run
