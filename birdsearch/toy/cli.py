"""``birdsearch demo``: the whole pipeline on the toy world, offline, then the service and its web page.

Serve first, evaluate after. What a first answer needs comes first, each step cached under the
world's directory (``<world>/demo/``), so that a second run starts serving within seconds:

1. the toy world's taxonomy, gallery photos and models (shipped with the package: installed, not
   trained) and one example recording per species to query with;
2. each toy student's audio tower distilled into the toy teacher's text space, with the species
   classifier beside it; the encoder's default query mode (distilled, classifier or hybrid) is the
   one with the best mAP of the validation clips against the gallery (``--val-gallery``) (shipped:
   installed);
3. the toy gallery indexed with the toy teacher;
4. the served modes' confidences and open-set gates (``calibration.json``, ``open_set.json``;
   shipped: installed, else fitted on clips held out from training, background and the open
   world's validation recordings).

Then the API and the web page serve the realistic student's encoder in its default mode, while a
background process (``demo --no-serve`` at a lower priority) does the rest:

5. the rest of the world (the distillation and query recordings, the soundscapes), then every
   method evaluated on the held-out recordings, once with the realistic student (it can name only
   part of the species, like BioLingual) and once with the perfect one, side by side when two cores
   are idle; the tables are printed and written where the page shows them
   (``BIRDSEARCH_EVALUATION_REPORT``).

``--no-serve`` does 1-5 in the foreground and prints the tables.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The query service's app factory, by the name `birdsearch serve` and uvicorn start it: the demo is an app
# beside the service and does not import it (docs/architecture.md, the floor plan).
SERVICE_APP = "birdsearch.service.app:create_app"
# Distillation settings for the toy models: the defaults (lr 1e-4, batch 256) are the real BioLingual's
# and barely move the toy student in the few steps a toy world offers (docs/distillation.md).
# The species classifier (query modes classifier and hybrid) is fitted beside the encoder.
DEMO_DISTILL = {"epochs": 15, "batch_size": 16, "lr": 1e-3, "species_classifier": True}
# Torch threads of each evaluation: the figures must not depend on how many cores a machine has
# (a float sum split over other threads rounds differently); two cores run the two students side by side.
EVALUATION_THREADS = 1
# The background evaluation yields to the server: a query waits for no evaluation.
BACKGROUND_NICENESS = 10


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the whole pipeline on the offline toy world, then the web page",
        description="Builds (or loads) the toy world, installs (or distils) the toy encoders, indexes the toy "
        "gallery, fits the confidences and serves the API and the web page; the evaluation of every method "
        "runs in the background and shows on the page when done (--no-serve: prints it and stops).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port to serve on (default: %(default)s)")
    parser.add_argument("--no-serve", action="store_true", help="evaluate in the foreground, print, stop")
    parser.add_argument("--json", action="store_true", help="print the evaluation as JSON")
    parser.add_argument("--preset", default="default", help="toy world size: default, small or tiny")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the world, models, index and report")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.set_defaults(func=run_demo)


@dataclass(frozen=True)
class Demo:
    """What the demo serves and evaluates: the world, its two students, their encoders, the index."""

    world: Any
    students: dict[str, str]  # "realistic" and "perfect": their model specs
    encoders: dict[str, Path]  # the same: their distilled encoders
    index_root: Path

    @property
    def report(self) -> Path:
        """The evaluation's tables (Markdown; ``.json``: the full reports), named by what went in."""
        from birdsearch.indexer.store import IndexRoot

        key = cache_key(self.encoders, IndexRoot(self.index_root).current_name())
        return self.world.root / "demo" / "evaluation" / f"report-{key}.md"


def run_demo(args: argparse.Namespace) -> int:
    demo = prepare(args)
    if args.no_serve:
        write_report(evaluate(demo, args), args.json)
        return 0
    return serve(demo, args)


def prepare(args: argparse.Namespace) -> Demo:
    """Steps 1-4: everything a first answer needs, and nothing else."""
    from birdsearch.toy.world import MODEL_STAGES, ensure_world

    stages = (*MODEL_STAGES, "gallery", "examples")
    world = ensure_world(args.preset, rebuild=args.rebuild, stages=stages, progress=progress(args))
    root = world.root / "demo"
    students = {"realistic": world.student_spec, "perfect": world.perfect_student_spec}
    encoders = {name: distil(world, spec, root / f"encoder-{name}", args) for name, spec in students.items()}
    index_root = build_index(world, root / "index", args)
    calibrate(world, encoders["realistic"], students["realistic"], index_root, args)
    return Demo(world, students, encoders, index_root)


def progress(args: argparse.Namespace) -> bool:
    """Progress bars unless ``-q``."""
    return not getattr(args, "quiet", False)


def distil(world: Any, student: str, out: Path, args: argparse.Namespace) -> Path:
    """Distil one student (resumes an interrupted run; reuses a finished one)."""
    from birdsearch.model.distill.trainer import DistillConfig, distill
    from birdsearch.toy.shipped import install_encoder
    from birdsearch.toy.training import torch_threads, training_threads
    from birdsearch.toy.world import ensure_world

    encoder_dir = out / "encoder"
    if encoder_dir.is_dir() and not args.rebuild:
        return encoder_dir
    settings = distill_settings(world)
    # ``out`` is <demo>/encoder-<variant>; the package ships the default world's two encoders.
    if not args.rebuild and install_encoder(world, out.name.removeprefix("encoder-"), settings, encoder_dir):
        return encoder_dir
    ensure_world(world.config, stages=("audio",), progress=progress(args))  # the recordings it learns from
    log.info("distilling %s into %s's text space", student, world.teacher_spec)
    config = DistillConfig(
        manifest=str(world.distill_manifest),
        out=str(out),
        teacher=world.teacher_spec,
        student=student,
        taxa=str(world.taxa_csv),
        device=args.device,
        val_gallery=str(world.gallery_manifest),  # the encoder's default mode: chosen on validation
        **settings,
    )
    with torch_threads(training_threads()):  # as the toy models: same thread count, same encoder
        result = distill(config)
    assert result.encoder_dir is not None  # no stop_after: the run finished
    return result.encoder_dir


def distill_settings(world: Any) -> dict[str, Any]:
    """``DEMO_DISTILL``, the batch no larger than the world's training clips.

    Every training recording gives at least one clip, so a world with a batch of them needs no
    recording drawn to know its settings (the shipped encoder's name hashes them); only a smaller one
    (the tiny preset) counts the clips of its distillation manifest.
    """
    from birdsearch.toy.world import ensure_world

    batch = DEMO_DISTILL["batch_size"]
    if world.config.distill_train * world.config.n_species < batch:
        ensure_world(world.config, stages=("audio",), progress=False)
        batch = min(batch, training_clips(world.distill_manifest))
    return {**DEMO_DISTILL, "batch_size": batch}


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
        gallery=world.gallery_manifest,
        out=root,
        teacher=world.teacher_spec,
        device=args.device,
        progress=progress(args),
    )
    summary = run_index(config)
    log.info("index %s: %s", root, summary)
    return root


def calibration_places(encoder: Path, index_root: Path) -> dict[str, Path]:
    """The demo's fitted files, by their name in the shipped folder: each mode's calibration and
    open-set gate beside the encoder and in the index root, and the cascade's novelty reference (the
    encoder's ships in the encoder's folder)."""
    from birdsearch.model.calibration import FILE_NAME
    from birdsearch.model.novelty import OPEN_SET_FILE, REFERENCE_CARD, REFERENCE_FILE

    places = {f"encoder.{name}": encoder / name for name in (FILE_NAME, OPEN_SET_FILE)}
    index_files = (FILE_NAME, OPEN_SET_FILE, REFERENCE_FILE, REFERENCE_CARD)
    return places | {f"index.{name}": index_root / name for name in index_files}


def calibrate(
    world: Any, encoder: Path, student: str, index_root: Path, args: argparse.Namespace, shipped: bool = True
) -> None:
    """The served modes' confidences and open-set gates: ``calibration.json`` and ``open_set.json``
    beside the encoder (its modes: distilled, classifier, hybrid) and in the index root (cascade),
    where the service and ``analyze`` look them up.

    The ones the package ships for this world's encoder are installed (``shipped``, unless
    ``--rebuild``). Otherwise they are fitted on clips held out from training and background-only
    recordings (``birdsearch.toy.background.calibration_clips``) and on the open world's validation
    recordings (``outside_clips``: out-of-gallery birds, non-bird sounds, a shifted recorder), so
    that the web page, the API and ``analyze`` abstain on the demo as on a real deployment. A model
    without its novelty reference (the cascade's student) gets one from the distillation's training
    recordings.
    """
    from birdsearch.engine.calibrate import Clip, build_mode_reference, fit_mode
    from birdsearch.engine.config import EngineConfig
    from birdsearch.engine.detector import Detector
    from birdsearch.engine.ranking import DEFAULT_SPECIES_RULE
    from birdsearch.model.calibration import FILE_NAME, load_calibration, save_calibration
    from birdsearch.model.novelty import (
        OPEN_SET_FILE,
        REFERENCE_CARD,
        load_open_set,
        load_reference,
        save_open_set,
    )
    from birdsearch.model.species_head import load_species_head
    from birdsearch.toy.background import calibration_clips, outside_clips
    from birdsearch.toy.shipped import install_calibration
    from birdsearch.toy.world import ensure_world

    modes = ("distilled", "classifier", "hybrid") if load_species_head(encoder) else ("distilled",)
    folders = {**{mode: encoder for mode in modes}, "cascade": index_root}
    places = calibration_places(encoder, index_root)
    if args.rebuild:  # refit from scratch, not on top of an older fit
        for place in places.values():
            place.unlink(missing_ok=True)

    def fitted(mode: str, folder: Path) -> bool:
        return all((folder / name).is_file() and mode in load(folder / name)
                   for name, load in ((FILE_NAME, load_calibration), (OPEN_SET_FILE, load_open_set)))  # fmt: skip

    missing = [mode for mode, folder in folders.items() if not fitted(mode, folder)]
    if not missing:
        return
    if shipped and not args.rebuild and install_calibration(world, distill_settings(world), places):
        missing = [mode for mode, folder in folders.items() if not fitted(mode, folder)]
        if not missing:
            return
    ensure_world(world.config, stages=("audio",), progress=progress(args))  # the validation recordings
    clips: list[Clip] = [*calibration_clips(world, world.root / "demo" / "calibration-audio")]
    clips += [(path, None, group) for path, group in outside_clips(world)]
    config = EngineConfig(index_root=index_root, checkpoint=str(encoder), student=student, device=args.device)
    for mode in missing:
        folder = folders[mode]
        engine = Detector.load(config, mode, gate=False)
        if (folder / REFERENCE_CARD).is_file():
            reference = load_reference(folder)
        else:
            reference = build_mode_reference(engine, world.distill_manifest, folder)
        platt, gate = fit_mode(engine, clips, DEFAULT_SPECIES_RULE, reference=reference)
        save_calibration(folder / FILE_NAME, mode, platt)
        save_open_set(folder / OPEN_SET_FILE, mode, gate)


def evaluate(demo: Demo, args: argparse.Namespace) -> dict[str, Any]:
    """Step 5: every method with each student, cached by what went in (encoders, index version).

    Each student's evaluation runs on ``EVALUATION_THREADS`` torch threads, in a process of its own
    when the cores are idle, so that the figures are the same however many cores do the work.
    """
    from birdsearch.model.evaluate.run import EvaluateConfig
    from birdsearch.toy.parallel import idle_cores, ordered_map
    from birdsearch.toy.world import ensure_world

    cached = demo.report.with_suffix(".json")
    if cached.is_file() and not args.rebuild:
        reports = json.loads(cached.read_text())
        write_atomically(demo.report, tables(reports, paths=False))
        return reports
    world = ensure_world(demo.world.config, progress=progress(args))  # the recordings, the soundscapes
    configs = [
        EvaluateConfig(
            dataset=f"toy:{world.preset or 'default'}",
            index=str(demo.index_root),
            encoders=[f"distilled={demo.encoders[name]}"],
            teacher=world.teacher_spec,
            student=student,
            device=args.device,
            out=str(cached.parent / name),
        )
        for name, student in demo.students.items()
    ]
    workers = min(len(configs), idle_cores()) if args.device in ("auto", "cpu") else 1
    reports = dict(zip(demo.students, ordered_map(evaluate_one, configs, workers, min_items=1), strict=True))
    write_atomically(cached, json.dumps(reports, default=str))
    write_atomically(demo.report, tables(reports, paths=False))
    return reports


def evaluate_one(config: Any) -> dict[str, Any]:
    """One student's evaluation on ``EVALUATION_THREADS`` threads (also in a process of its own)."""
    from birdsearch.model.evaluate.run import evaluate as run_evaluation
    from birdsearch.toy import plugin
    from birdsearch.toy.training import torch_threads

    plugin.register()  # a spawned process starts without the toy specs
    with torch_threads(EVALUATION_THREADS):
        return run_evaluation(config)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` beside ``path``, then rename: a reader (the server) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.replace(path)


def cache_key(encoders: dict[str, Path], index_version: str | None) -> str:
    """Changes whenever an encoder is re-distilled or a new index version is published."""
    parts = [f"{name}:{(path / 'card.json').read_text()}" for name, path in sorted(encoders.items())]
    return hashlib.sha256("|".join([*parts, str(index_version)]).encode()).hexdigest()[:16]


TITLES = {
    "realistic": "Toy student with a realistic text side (names only part of the species, like BioLingual)",
    "perfect": "Toy student with a perfect text side (names every species)",
}


def tables(reports: dict[str, Any], paths: bool) -> str:
    """Both evaluations as Markdown tables; ``paths``: name where each full report was written."""
    from birdsearch.model.evaluate.report import markdown

    parts = []
    for name, report in reports.items():
        parts.append(f"# {TITLES[name]}\n\n{markdown(report, configuration=False)}\n")
        if paths:
            parts.append(f"\nFull report, configuration and plots: {report['config']['out']}\n")
    return "\n".join(parts)


def write_report(reports: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(reports, indent=2, default=str) + "\n")
        return
    sys.stdout.write("\n" + tables(reports, paths=True))
    sys.stdout.flush()


def serve(demo: Demo, args: argparse.Namespace) -> int:
    """Serve the realistic student's encoder; the evaluation runs in the background unless it is cached."""
    import uvicorn

    from birdsearch.engine.config import EngineSettings, read_settings

    settings = {
        "index_root": demo.index_root,
        "checkpoint": demo.encoders["realistic"],
        "student": demo.students["realistic"],
        "device": args.device,
        "evaluation_report": demo.report,
    }
    for name, value in settings.items():  # what `birdsearch serve` reads, as its own flags would set it
        os.environ[f"BIRDSEARCH_{name.upper()}"] = str(value)
    read_settings(EngineSettings)  # a bad BIRDSEARCH_* variable stops the demo here, saying which
    from birdsearch.model.encoder import read_card
    from birdsearch.model.species_head import recorded_modes

    why = recorded_modes(read_card(Path(demo.encoders["realistic"]))).get("why", "distilled")
    background = None if demo.report.is_file() else start_evaluation(args)
    sys.stdout.write(
        f"\nServing the toy world at http://{args.host}:{args.port}/  (Ctrl-C to stop)\n"
        f"Default query mode {why}\n"
        f"Recordings to try, one per species: {demo.world.examples_dir}\n"
    )
    if background is not None:
        sys.stdout.write(
            "The evaluation of every method runs in the background: its tables appear here and on "
            "the page when it is done.\n"
        )
    sys.stdout.flush()
    try:
        uvicorn.run(SERVICE_APP, factory=True, host=args.host, port=args.port, log_level="warning")
    finally:
        if background is not None and background.poll() is None:
            background.terminate()
            background.wait()
    return 0


def start_evaluation(args: argparse.Namespace) -> subprocess.Popen:
    """``demo --no-serve`` in a child process at a lower priority: it finds steps 1-4 done and does 5."""
    verbosity = ["-" + "v" * args.verbose] if getattr(args, "verbose", 0) else ["-q"]
    command = [sys.executable, "-m", "birdsearch.cli", *verbosity, "demo", "--no-serve"]
    command += ["--preset", args.preset, "--device", args.device]
    child = subprocess.Popen(command, env={**os.environ, "TQDM_DISABLE": "1"})
    if hasattr(os, "setpriority"):
        os.setpriority(os.PRIO_PROCESS, child.pid, BACKGROUND_NICENESS)
    return child
