"""Rebuild a toy world's models from scratch and pack them as the package's shipped models.

``python -m birdsearch.toy.export --preset default``: what is packed, and how it installs, is in
``birdsearch.toy.shipped``; ``--calibration`` fits and packs only the demo's calibration again, on
the shipped models (when the engine's scoring changes, the models stay). This module sits above the world and the demo's distillation (it runs
them); ``shipped`` stays below them, so the trainers can use its rounding without an import circle.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from birdsearch.toy.shipped import (
    SHIPPED_ROOT,
    calibration_dir_name,
    encoder_dir_name,
    install,
    pack,
    pack_calibration,
)

if TYPE_CHECKING:
    from birdsearch.toy.world import ToyWorld

log = logging.getLogger(__name__)


def export(preset: str, out_root: Path = SHIPPED_ROOT, keep_data: bool = False) -> list[Path]:
    """Build ``preset``'s world from scratch, distil the demo's encoders, and pack every model.

    ``keep_data``: train on the photos and recordings already in the cache (the same bytes a
    rebuild would draw), retraining every model and distilling again.
    """
    from birdsearch.toy import plugin
    from birdsearch.toy.world import MODEL_STAGES, ensure_world, model_dirs, open_world

    plugin.register()  # the encoders' cards name their student by its toy spec
    if keep_data:
        world = open_world(preset)
        models = [*model_dirs(world).values(), world.root / "demo", world.metrics_json]
        models += [world.stage_marker(stage) for stage in (*MODEL_STAGES, "metrics")]
        for path in models:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    world = ensure_world(preset, rebuild=not keep_data, train=True)
    written = []
    for stage, directory in model_dirs(world).items():
        facts = json.loads(world.stage_marker(stage).read_text())
        written.append(out_root / directory.name)
        pack(directory, written[-1], facts, world.config.seed)
    written.append(out_root / world.metrics_json.name)  # measured on the models above
    shutil.copyfile(world.metrics_json, written[-1])
    return written + pack_encoders(world, out_root)


def export_encoders(preset: str, out_root: Path = SHIPPED_ROOT) -> list[Path]:
    """Distil the demo's two encoders again from the world's models as the package ships them, and pack them.

    What ``export`` would give for the encoders (an installed model is bit-identical to a rebuilt
    one), without training the teacher and the students again.
    """
    from birdsearch.toy import plugin
    from birdsearch.toy.world import ensure_world

    plugin.register()
    return pack_encoders(ensure_world(preset), out_root)


def pack_encoders(world: Any, out_root: Path) -> list[Path]:
    """Distil (from scratch) and pack the demo's encoder of each student variant."""
    from birdsearch.toy.cli import distil, distill_settings

    written = []
    specs = {"realistic": world.student_spec, "perfect": world.perfect_student_spec}
    settings = distill_settings(world)
    for variant, spec in specs.items():
        run = world.root / "demo" / f"encoder-{variant}"
        encoder = distil(world, spec, run, argparse.Namespace(rebuild=True, device="cpu"))
        written.append(out_root / encoder_dir_name(world, variant, settings))
        pack(encoder, written[-1], {"distill": settings}, world.config.seed, rounding=True)
        # What the demo installs is the rounded copy: the calibration must be fitted on that one.
        install(encoder, world.config.seed, name=written[-1].name, root=out_root)
    written.append(export_calibration(world, out_root))
    return written


def export_calibration(world: ToyWorld, out_root: Path = SHIPPED_ROOT) -> Path:
    """Fit the demo's calibration on the world's installed encoder and index; pack it into ``out_root``."""
    from birdsearch.toy.cli import build_index, calibrate, calibration_places, distill_settings

    args = argparse.Namespace(rebuild=False, device="cpu", quiet=True)
    demo = world.root / "demo"
    encoder, index_root = demo / "encoder-realistic" / "encoder", build_index(world, demo / "index", args)
    places = calibration_places(encoder, index_root)
    for place in places.values():
        place.unlink(missing_ok=True)
    calibrate(world, encoder, world.student_spec, index_root, args, shipped=False)
    out = out_root / calibration_dir_name(world, distill_settings(world))
    pack_calibration(places, out, {"encoder": encoder_dir_name(world, "realistic", distill_settings(world))})
    return out


def reexport_calibration(preset: str, out_root: Path = SHIPPED_ROOT) -> Path:
    """The calibration alone, on the shipped models (after a change to the engine's scoring, say)."""
    from birdsearch.toy import plugin
    from birdsearch.toy.cli import distil
    from birdsearch.toy.world import MODEL_STAGES, ensure_world

    plugin.register()
    world = ensure_world(preset, stages=(*MODEL_STAGES, "gallery"), progress=False)
    args = argparse.Namespace(rebuild=False, device="cpu", quiet=True)
    distil(world, world.student_spec, world.root / "demo" / "encoder-realistic", args)  # installs it
    return export_calibration(world, out_root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m birdsearch.toy.export",
        description="Rebuild a toy world's models from scratch and write them as the package's shipped models.",
    )
    parser.add_argument("--preset", default="default", help="toy world: default, small or tiny")
    parser.add_argument(
        "--keep-data",
        action="store_true",
        help="train on the cached photos and recordings instead of redrawing them",
    )
    parser.add_argument("--encoders-only", action="store_true",
                        help="only distil and pack the demo's encoders (and their calibration), from the models as "
                        "they ship")  # fmt: skip
    parser.add_argument(
        "--calibration",
        action="store_true",
        help="only fit and pack the demo's calibration and open-set gates again, on the shipped models",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("BIRDSEARCH_TOY_THREADS", "1")  # one thread: the same models on any machine
    if args.calibration:
        written = [reexport_calibration(args.preset)]
    elif args.encoders_only:
        written = export_encoders(args.preset)
    else:
        written = export(args.preset, keep_data=args.keep_data)
    for path in written:
        files = list(path.iterdir()) if path.is_dir() else [path]
        log.info("%s: %.1f MB", path, sum(f.stat().st_size for f in files) / 1e6)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
