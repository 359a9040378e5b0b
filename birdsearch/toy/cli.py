"""``birdsearch demo``: the whole pipeline on the toy world, offline, then the service and its web page.

Steps, each cached under the world's directory (``<world>/demo/``) so that a second run starts
serving within seconds:

1. build (or load) the toy world: taxonomy, photos, calls, the toy teacher and students;
2. distil each toy student's audio tower into the toy teacher's text space;
3. index the toy gallery with the toy teacher;
4. fit the served modes' confidences on clips held out from training (``calibration.json``);
5. evaluate every method on the held-out recordings, once with the realistic student (it can name
   only part of the species, like BioLingual) and once with the perfect one, and print both tables;
6. serve the API and the web page with the distilled encoder (unless ``--no-serve``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The query service's app factory, by the name `birdsearch serve` and uvicorn start it: the demo is an app
# beside the service and does not import it (docs/architecture.md, the floor plan).
SERVICE_APP = "birdsearch.service.app:create_app"
# Distillation settings for the toy models: the defaults (lr 1e-4, batch 256) are the real BioLingual's
# and barely move the toy student in the few steps a toy world offers (docs/distillation.md).
DEMO_DISTILL = {"epochs": 15, "batch_size": 16, "lr": 1e-3}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the whole pipeline on the offline toy world, then the web page",
        description="Builds (or loads) the toy world, distils the toy student, indexes the toy gallery, "
        "fits the confidences, prints the evaluation of every method, then serves the API and the web page.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port to serve on (default: %(default)s)")
    parser.add_argument("--no-serve", action="store_true", help="stop after printing the evaluation")
    parser.add_argument("--json", action="store_true", help="print the evaluation as JSON")
    parser.add_argument("--preset", default="default", help="toy world size: default, small or tiny")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the world, models, index and report")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from birdsearch.toy.world import ensure_world

    world = ensure_world(args.preset, rebuild=args.rebuild)
    demo = world.root / "demo"
    variants = {"realistic": world.student_spec, "perfect": world.perfect_student_spec}
    encoders = {name: distil(world, spec, demo / f"encoder-{name}", args) for name, spec in variants.items()}
    index_root = build_index(world, demo / "index", args)
    calibrate(world, encoders["realistic"], variants["realistic"], index_root, args)
    report = evaluate(world, variants, encoders, index_root, demo / "evaluation", args)
    write_report(report, args.json)
    if args.no_serve:
        return 0
    return serve(index_root, encoders["realistic"], variants["realistic"], args)


def distil(world: Any, student: str, out: Path, args: argparse.Namespace) -> Path:
    """Distil one student (resumes an interrupted run; reuses a finished one)."""
    from birdsearch.model.distill.trainer import DistillConfig, distill
    from birdsearch.toy.shipped import install_encoder
    from birdsearch.toy.training import torch_threads, training_threads

    encoder_dir = out / "encoder"
    if encoder_dir.is_dir() and not args.rebuild:
        return encoder_dir
    settings = distill_settings(world)
    # ``out`` is <demo>/encoder-<variant>; the package ships the default world's two encoders.
    if not args.rebuild and install_encoder(world, out.name.removeprefix("encoder-"), settings, encoder_dir):
        return encoder_dir
    log.info("distilling %s into %s's text space", student, world.teacher_spec)
    config = DistillConfig(
        manifest=str(world.distill_manifest),
        out=str(out),
        teacher=world.teacher_spec,
        student=student,
        taxa=str(world.taxa_csv),
        device=args.device,
        **settings,
    )
    with torch_threads(training_threads()):  # as the toy models: same thread count, same encoder
        result = distill(config)
    assert result.encoder_dir is not None  # no stop_after: the run finished
    return result.encoder_dir


def distill_settings(world: Any) -> dict[str, Any]:
    """``DEMO_DISTILL``, the batch no larger than the world's training clips."""
    return {
        **DEMO_DISTILL,
        "batch_size": min(DEMO_DISTILL["batch_size"], training_clips(world.distill_manifest)),
    }


def training_clips(manifest: Path) -> int:
    """Rows of the distillation manifest that train (the tiny preset has fewer than one default batch)."""
    import csv

    with open(manifest, newline="") as f:
        return sum(1 for row in csv.DictReader(f) if row.get("split", "train") == "train")


def build_index(world: Any, root: Path, args: argparse.Namespace) -> Path:
    """Index the toy gallery once: a world's directory is keyed by its content, so its gallery never changes."""
    from birdsearch.indexer.pipeline import IndexConfig, run_index
    from birdsearch.indexer.store import IndexRoot

    if IndexRoot(root).current_name() and not args.rebuild:
        return root
    config = IndexConfig(
        gallery=world.gallery_manifest, out=root, teacher=world.teacher_spec, device=args.device
    )
    summary = run_index(config)
    log.info("index %s: %s", root, summary)
    return root


def calibrate(world: Any, encoder: Path, student: str, index_root: Path, args: argparse.Namespace) -> None:
    """Fit the served modes' confidences once: ``calibration.json`` beside the encoder (distilled) and
    in the index root (cascade), where the service and ``analyze`` look them up.

    Fit on clips held out from training (``birdsearch.toy.background.calibration_clips``), so that
    the web page's and the API's ``min_conf`` work on the demo as on a real deployment.
    """
    from birdsearch.engine.calibrate import fit_engine
    from birdsearch.engine.config import EngineConfig
    from birdsearch.engine.detector import Detector
    from birdsearch.engine.ranking import DEFAULT_SPECIES_RULE
    from birdsearch.model.calibration import FILE_NAME, save_calibration
    from birdsearch.toy.background import calibration_clips

    places = {"distilled": encoder / FILE_NAME, "cascade": index_root / FILE_NAME}
    missing = [mode for mode, place in places.items() if args.rebuild or not place.is_file()]
    if not missing:
        return
    clips = calibration_clips(world, world.root / "demo" / "calibration-audio")
    for mode in missing:
        config = EngineConfig(
            index_root=index_root, checkpoint=str(encoder), student=student, device=args.device
        )
        places[mode].unlink(missing_ok=True)  # refit from scratch, not on top of an older fit
        platt = fit_engine(Detector.load(config, mode), clips, DEFAULT_SPECIES_RULE)
        save_calibration(places[mode], mode, platt)


def evaluate(
    world: Any,
    students: dict[str, str],
    encoders: dict[str, Path],
    index_root: Path,
    out: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Evaluate every method with each student; cached by what went in (encoders, index version)."""
    from birdsearch.indexer.store import IndexRoot
    from birdsearch.model.evaluate.run import EvaluateConfig
    from birdsearch.model.evaluate.run import evaluate as run_evaluation

    key = cache_key(encoders, IndexRoot(index_root).current_name())
    cached = out / f"report-{key}.json"
    if cached.is_file() and not args.rebuild:
        return json.loads(cached.read_text())
    reports = {}
    for name, student in students.items():
        config = EvaluateConfig(
            dataset=f"toy:{world.preset or 'default'}",
            index=str(index_root),
            encoders=[f"distilled={encoders[name]}"],
            teacher=world.teacher_spec,
            student=student,
            device=args.device,
            out=str(out / name),
        )
        reports[name] = run_evaluation(config)
    out.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(reports, default=str))
    return reports


def cache_key(encoders: dict[str, Path], index_version: str | None) -> str:
    """Changes whenever an encoder is re-distilled or a new index version is published."""
    parts = [f"{name}:{(path / 'card.json').read_text()}" for name, path in sorted(encoders.items())]
    return hashlib.sha256("|".join([*parts, str(index_version)]).encode()).hexdigest()[:16]


def write_report(reports: dict[str, Any], as_json: bool) -> None:
    from birdsearch.model.evaluate.report import markdown

    if as_json:
        sys.stdout.write(json.dumps(reports, indent=2, default=str) + "\n")
        return
    titles = {
        "realistic": "Toy student with a realistic text side (names only part of the species, like BioLingual)",
        "perfect": "Toy student with a perfect text side (names every species)",
    }
    for name, report in reports.items():
        sys.stdout.write(f"\n# {titles[name]}\n\n{markdown(report, configuration=False)}\n")
        sys.stdout.write(f"\nFull report, configuration and plots: {report['config']['out']}\n")


def serve(index_root: Path, encoder: Path, student: str, args: argparse.Namespace) -> int:
    import uvicorn

    from birdsearch.engine.config import EngineSettings, read_settings

    settings = {"index_root": index_root, "checkpoint": encoder, "student": student, "device": args.device}
    for name, value in settings.items():  # what `birdsearch serve` reads, as its own flags would set it
        os.environ[f"BIRDSEARCH_{name.upper()}"] = str(value)
    read_settings(EngineSettings)  # a bad BIRDSEARCH_* variable stops the demo here, saying which
    sys.stdout.write(f"\nServing the toy world at http://{args.host}:{args.port}/  (Ctrl-C to stop)\n")
    sys.stdout.flush()
    uvicorn.run(SERVICE_APP, factory=True, host=args.host, port=args.port, log_level="warning")
    return 0
