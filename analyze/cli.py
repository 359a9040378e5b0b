"""``birdsearch analyze INPUT... --out DIR``: folders of recordings to detection tables."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from birdsearch.cli_args import QUERY_MODES, add_model_args


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="analyse files and folders of recordings into detection tables (CSV, Raven, Audacity, "
        "Kaleidoscope, JSONL)",
        description="Analyse recordings in-process: the models and the index load once, windows of many "
        "files share forward passes, long recordings are read block by block. Each window's species scoring "
        "at least --min-conf are detections, each with the best photo of its species. Per-recording files and "
        "one combined table per run go to --out; a rerun with the same settings skips what is done; recordings "
        "that fail are listed in failures.csv and the run goes on. BirdNET-Analyzer's spellings of the options "
        "(--min_conf, --slist, --rtype, --overlap, --threads, --batch_size, ...) work too.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="recording files, folders (searched "
                        "recursively) or glob patterns (quote them: 'cards/**/*.WAV')")  # fmt: skip
    parser.add_argument("--out", "-o", "--output", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--index-root", type=Path,
                        help="index root (default: BIRDSEARCH_INDEX_ROOT or the cache's)")  # fmt: skip
    parser.add_argument("--checkpoint", default=os.environ.get("BIRDSEARCH_CHECKPOINT", ""),
                        help="distilled encoder folder (default: BIRDSEARCH_CHECKPOINT; none: the cascade)")  # fmt: skip
    parser.add_argument("--mode", choices=("auto", *QUERY_MODES), default="auto",
                        help="auto: the checkpoint's recorded default (the mode its validation chose), else the cascade")  # fmt: skip
    add_model_args(parser, teacher=False)  # --student (the cascade's) and --device
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--format", default="csv,raven,audacity,jsonl",
                         help="comma-separated: csv, raven (BirdNET's table), audacity, kaleidoscope, jsonl "
                         "(default: %(default)s)")  # fmt: skip
    outputs.add_argument("--rtype", nargs="+", metavar="TYPE",
                         help="BirdNET's spelling of --format: table, csv, audacity, kaleidoscope (space-separated)")  # fmt: skip
    outputs.add_argument("--merge-consecutive", "--merge_consecutive", type=int, default=1, metavar="N",
                         help="merge a species' detections in consecutive windows into one, at most N windows "
                         "(confidence: the mean of the best three, as BirdNET's; 0 or 1: no merging; default: 1)")  # fmt: skip
    outputs.add_argument("--locale", "-l", default="en",
                         help="common names in this language: BirdNET's codes (de, fr, en_uk, pt_BR, zh, ...) or "
                         "the IOC list's language names, from --names (default: en, the index's names)")  # fmt: skip
    outputs.add_argument("--names", type=Path, default=os.environ.get("BIRDSEARCH_NAMES") or None,
                         help="the IOC World Bird List's multilingual version, its List sheet saved as CSV "
                         "(default: BIRDSEARCH_NAMES); species it does not name keep their English names")  # fmt: skip
    outputs.add_argument("--additional-columns", "--additional_columns", nargs="+", default=[], metavar="COLUMN",
                         help="settings written as extra CSV columns: overlap, min_conf, species_list, model "
                         "(BirdNET's), window_s, hop_s, species_k, species_rule, mode, index, fmin, fmax, locale, "
                         "calibration")  # fmt: skip
    outputs.add_argument("--absolute-paths", action="store_true",
                         help="write recordings' paths absolute (default: as given, so tables move with the data)")  # fmt: skip
    detections = parser.add_argument_group("detections")
    detections.add_argument("--min-conf", "--min_conf", type=float,
                            help="keep species whose calibrated confidence in a window is at least this (0..1; "
                            "default: the threshold chosen with the mode's open-set gate, else 0.1; not BirdNET's "
                            "scale); without a calibration for the mode, the raw pooled cosine score. A window the "
                            "gate calls novel gives no detection")  # fmt: skip
    detections.add_argument("--calibration", default=os.environ.get("BIRDSEARCH_CALIBRATION", ""),
                            help="calibration file (default: BIRDSEARCH_CALIBRATION, else calibration.json beside "
                            "the encoder or in the index root)")  # fmt: skip
    detections.add_argument("--species-k", type=int, default=5,
                            help="at most this many species a window (default: %(default)s)")  # fmt: skip
    detections.add_argument("--species-list", "--slist", type=Path,
                            help="only these species: a file (or a folder holding species_list.txt) of scientific "
                            "names or BirdNET 'Scientific_Common' lines")  # fmt: skip
    detections.add_argument("--strict", action="store_true", dest="strict_species_list",
                            help="stop when the species list names species the index lacks (default: skip them, "
                            "with a warning that gives the nearest names)")  # fmt: skip
    detections.add_argument("--species-rule", default=os.environ.get("BIRDSEARCH_SPECIES_RULE"),
                            help="how a species' photos pool into its window score: best, mean-top:M, kth:Q or "
                            "lme:T (default: BIRDSEARCH_SPECIES_RULE, else the service's default)")  # fmt: skip
    detections.add_argument("--window-s", type=float, help="window length, seconds (default: the model's)")
    detections.add_argument("--hop-s", type=float, help="hop between windows, seconds (default: the window)")
    detections.add_argument("--overlap", type=float, metavar="SECONDS",
                            help="BirdNET's spelling of the hop: seconds two windows share (hop = window - overlap)")  # fmt: skip
    detections.add_argument("--fmin", type=float, default=0.0, metavar="HZ",
                            help="band-pass the audio before the model: lowest frequency kept (BirdNET's --fmin; "
                            "default: none)")  # fmt: skip
    detections.add_argument("--fmax", type=float, default=None, metavar="HZ",
                            help="highest frequency kept (BirdNET's --fmax; default: none); the band is the Raven "
                            "table's Low/High Freq")  # fmt: skip
    speed = parser.add_argument_group("speed and limits")
    speed.add_argument("--batch-size", "--batch_size", "-b", type=int, default=0,
                       help="windows per forward pass (0: 64 on a GPU, 8 on a CPU)")  # fmt: skip
    speed.add_argument("--workers", "--threads", "-t", type=int, default=0,
                       help="decoding threads (0: the usable cores)")  # fmt: skip
    speed.add_argument("--max-duration-s", type=float, default=48 * 3600.0,
                       help="longer recordings are listed as failures: a safety limit, since recordings are read "
                       "block by block (default: %(default)g, 48 h)")  # fmt: skip
    speed.add_argument("--no-progress", action="store_true", help="no progress bar")
    runners = parser.add_argument_group("runners (default: this process)")
    runners.add_argument("--url", default="", help="send the recordings to the query service at URL ('birdsearch "
                         "serve') instead of loading models here; --workers uploads in flight (0: 4)")  # fmt: skip
    runners.add_argument("--runner", default="local", choices=("local", "ray"),
                         help="ray: decoding and the model on Ray Data across machines (needs the distributed extra)")  # fmt: skip
    runners.add_argument("--ray-address", default=None,
                         help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")  # fmt: skip
    runners.add_argument("--ray-actors", type=int, default=1,
                         help="model actors on Ray (one GPU each where present)")  # fmt: skip
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
        formats=tuple(parse_formats(" ".join(args.rtype) if args.rtype else args.format)),
        merge_consecutive=args.merge_consecutive,
        locale=args.locale,
        names=args.names,
        additional_columns=tuple(c for value in args.additional_columns for c in value.split(",") if c),
        absolute_paths=args.absolute_paths,
        min_conf=args.min_conf,
        calibration=args.calibration,
        species_k=args.species_k,
        window_s=args.window_s,
        hop_s=args.hop_s,
        overlap_s=args.overlap,
        fmin_hz=args.fmin,
        fmax_hz=args.fmax,
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
