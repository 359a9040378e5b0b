"""``birdsearch evaluate``: the command line of ``birdsearch.model.evaluate.run``."""

from __future__ import annotations

import argparse
import json
import sys

from birdsearch.cli_args import add_model_args
from birdsearch.model.hub import DEFAULT_STUDENT, DEFAULT_TEACHER

# birdsearch.model.evaluate.run.DEFAULT_METHODS, spelled out so that --help does not import torch
DEFAULT_METHODS = (
    "random", "cascade-hard", "cascade-soft", "map-ridge", "map-procrustes", "map-mlp",
    "linear-head", "linear-cascade-hard", "linear-cascade-soft",
)  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="audio-to-image retrieval and audio classification, every method side by side",
        description="Evaluate the distilled encoder(s) against the zero-shot cascade, the text-space "
        "mappings and chance on query recordings (retrieval against a photo gallery, classification "
        "against the teacher's species text) and on soundscapes. Writes report.md, report.json and "
        "PNG plots to --out.",
    )
    parser.add_argument("--dataset", default="toy",
                        help="toy, toy:small, ssw60:DIR, manifest:PATH or none (default: %(default)s)")  # fmt: skip
    parser.add_argument("--soundscapes", help="a BirdSet-style folder (annotations + recordings + taxa.csv)")
    parser.add_argument(
        "--taxa",
        help="species table for manifest: and soundscape data (the project's CSV, or the eBird taxonomy, "
        "eBird/Clements or IOC master list CSV as published)",
    )
    gallery = parser.add_mutually_exclusive_group()
    gallery.add_argument("--index", help="index root built by 'birdsearch index' (the photos searched)")
    gallery.add_argument("--gallery", help="gallery manifest (path, species), embedded here with the teacher")
    parser.add_argument("--encoder", action="append", default=[], metavar="[NAME=]DIR",
                        help="a distilled encoder (repeat for several, e.g. an ablation)")  # fmt: skip
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help="baselines, comma-separated (default: all)")  # fmt: skip
    parser.add_argument("--train-manifest",
                        help="the distillation manifest whose train rows the supervised controls (linear-head, "
                        "linear-cascade-*) learn from and whose val rows choose their settings (default: a "
                        "registered data set's)")  # fmt: skip
    parser.add_argument("--control-objective", default="batch", choices=("batch", "class"),
                        help="distillation objective of the linear-head control (default: %(default)s)")  # fmt: skip
    add_model_args(parser)
    parser.add_argument("--name-format", default="taxon_com", help="teacher species name format")
    parser.add_argument("--templates", default="openai", help="teacher template set")
    parser.add_argument("--split", default="test",
                        help="audio split to query with: test (held out), val or train; a manifest without rows "
                        "of it is refused (default: %(default)s)")  # fmt: skip
    parser.add_argument("--image-sources", default="nabirds,inat", help="SSW60 photos in the gallery")
    parser.add_argument("--max-queries", type=int,
                        help="at most N queries, spread evenly across species (a quick look)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the --max-queries sample, the random baseline and the learned maps")  # fmt: skip
    parser.add_argument("--out", help="report directory")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--no-snap", action="store_true", help="skip the NAME+snap-hard/-soft variants of encoders"
    )
    parser.add_argument("--json", action="store_true", help="print the report JSON instead of the table")
    parser.add_argument("--export-ssw60", metavar="OUT",
                        help="with --dataset ssw60:DIR: write taxa, train/test audio and gallery manifests to OUT and stop")  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from birdsearch.errors import ConfigError
    from birdsearch.model.evaluate import report
    from birdsearch.model.evaluate.run import EvaluateConfig, evaluate

    if args.export_ssw60:
        from birdsearch.model.evaluate.datasets import export_ssw60

        kind, _, root = args.dataset.partition(":")
        if kind != "ssw60" or not root:
            raise ConfigError("--export-ssw60 needs --dataset ssw60:DIR")
        paths = export_ssw60(root, args.export_ssw60, tuple(args.image_sources.split(",")))
        sys.stdout.write(json.dumps({k: str(v) for k, v in paths.items()}, indent=2) + "\n")
        return 0
    config = EvaluateConfig(
        dataset=args.dataset,
        soundscapes=args.soundscapes,
        taxa=args.taxa,
        index=args.index,
        gallery=args.gallery,
        encoders=args.encoder,
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        train_manifest=args.train_manifest,
        control_objective=args.control_objective,
        # the shared flags default to the real models; a toy data set brings its own unless named
        teacher=None if args.teacher == DEFAULT_TEACHER else args.teacher,
        student=None if args.student == DEFAULT_STUDENT else args.student,
        device=args.device,
        name_format=args.name_format,
        templates=args.templates,
        split=args.split,
        image_sources=tuple(args.image_sources.split(",")),
        max_queries=args.max_queries,
        seed=args.seed,
        out=args.out,
        plots=not args.no_plots,
        snap=not args.no_snap,
    )
    result = evaluate(config)
    if args.json:
        sys.stdout.write(json.dumps(report.clean(result), indent=1, default=str) + "\n")
    else:
        sys.stdout.write(report.markdown(result).split("\n## Methods")[0] + "\n")
        if args.out:
            sys.stdout.write(f"\nreport: {args.out}/report.md\n")
    return 0
