"""Rebuild a toy world's models from scratch and pack them as the package's shipped models.

``python -m birdsearch.toy.export --preset default``: what is packed, and how it installs, is in
``birdsearch.toy.shipped``. This module sits above the world and the demo's distillation (it runs
them); ``shipped`` stays below them, so the trainers can use its rounding without an import circle.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

from birdsearch.toy.shipped import SHIPPED_ROOT, encoder_dir_name, pack

log = logging.getLogger(__name__)


def export(preset: str, out_root: Path = SHIPPED_ROOT, keep_data: bool = False) -> list[Path]:
    """Build ``preset``'s world from scratch, distil the demo's encoders, and pack every model.

    ``keep_data``: train on the photos and recordings already in the cache (the same bytes a
    rebuild would draw), retraining every model and distilling again.
    """
    from birdsearch.toy import plugin
    from birdsearch.toy.cli import distil, distill_settings
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
    specs = {"realistic": world.student_spec, "perfect": world.perfect_student_spec}
    for variant, spec in specs.items():
        run = world.root / "demo" / f"encoder-{variant}"
        encoder = distil(world, spec, run, argparse.Namespace(rebuild=True, device="cpu"))
        settings = distill_settings(world)
        written.append(out_root / encoder_dir_name(world, variant, settings))
        pack(encoder, written[-1], {"distill": settings}, world.config.seed, rounding=True)
    return written


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("BIRDSEARCH_TOY_THREADS", "1")  # one thread: the same models on any machine
    for path in export(args.preset, keep_data=args.keep_data):
        files = list(path.iterdir()) if path.is_dir() else [path]
        log.info("%s: %.1f MB", path, sum(f.stat().st_size for f in files) / 1e6)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
