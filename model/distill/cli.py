"""``birdsearch distill``: the command line of ``birdsearch.model.distill.trainer``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from birdsearch.cli_args import add_model_args, config_from_args
from birdsearch.cpus import available_cpus


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "distill",
        help="distil the student's audio tower into the teacher's text space",
        description="Fine-tune the student's audio tower (plus a head) so that a recording lands on its "
        "species' teacher text embedding. Rerun the same command to resume after an interruption. "
        "Several GPUs: torchrun --nproc_per_node N -m birdsearch.cli distill ...",
    )
    parser.add_argument(
        "--manifest",
        required=True,
        help="CSV/TSV/Parquet: path, species, [start_s, end_s, split]; or a data set: toy, toy:small",
    )
    parser.add_argument("--out", required=True, help="run directory (checkpoints, log.jsonl, encoder/)")
    parser.add_argument(
        "--taxa",
        help="species table CSV (scientific_name, common_name, order, family, key), or the eBird taxonomy, "
        "eBird/Clements or IOC master list CSV as published",
    )
    parser.add_argument(
        "--audio-root", help="folder relative audio paths are under (default: the manifest's)"
    )
    add_model_args(parser)
    training = parser.add_argument_group("training")
    training.add_argument("--target", default="teacher", choices=["teacher", "student-text", "rotated-teacher"],
                          help="text space to distil into; the others are the ablation and a control (default: %(default)s)")  # fmt: skip
    training.add_argument("--objective", default="batch", choices=["class", "batch"],
                          help="InfoNCE over all species (class) or within the batch, symmetric (batch) (default: %(default)s)")  # fmt: skip
    training.add_argument("--head-init", default="procrustes", choices=["random", "ridge", "procrustes"],
                          help="start the head as this caption-to-target map (default: %(default)s)")  # fmt: skip
    training.add_argument(
        "--name-format", default="taxon_com", help="teacher species name format (default: %(default)s)"
    )
    training.add_argument("--templates", default="openai", help="teacher template set (default: %(default)s)")
    training.add_argument("--epochs", type=int, default=10)
    training.add_argument("--schedule-epochs", type=int,
                          help="the learning-rate schedule spans this many epochs (default: --epochs): "
                          "trains a longer run's first --epochs")  # fmt: skip
    training.add_argument(
        "--batch-size",
        type=int,
        default=256,
        help="clips per optimizer step, all devices (default: %(default)s)",
    )
    training.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step")
    training.add_argument("--lr", type=float, default=1e-4)
    training.add_argument("--weight-decay", type=float, default=0.01)
    training.add_argument("--warmup", type=float, default=0.05, help="warm-up, as a fraction of all steps")
    training.add_argument(
        "--val-fraction", type=float, default=0.1, help="held out per species without a val split"
    )
    training.add_argument(
        "--no-freeze-batchnorm", action="store_true", help="update the input BatchNorm statistics"
    )
    training.add_argument("--seed", type=int, default=0)
    running = parser.add_argument_group("running")
    running.add_argument(
        "--workers",
        type=int,
        default=max(1, min(16, available_cpus() - 1)),
        help="audio decoding processes: at 2,000 clips/s a GPU needs about 8-12 (default: cores - 1 = %(default)s)",
    )
    running.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    running.add_argument("--log-every", type=int, default=10, help="steps between log lines")
    running.add_argument("--compile", action="store_true", help="torch.compile the encoder (GPU)")
    running.add_argument(
        "--no-check-audio", action="store_true", help="skip reading every file's header first"
    )
    running.add_argument("--stop-after", type=int, help="stop after this many steps (resume later)")
    running.add_argument(
        "--no-species-classifier",
        action="store_true",
        help="do not fit the species classifier beside the encoder (modes classifier, hybrid)",
    )
    running.add_argument("--val-gallery", help="a gallery manifest (path, species): its photos choose the "
                         "encoder's default query mode on the validation clips (default: distilled)")  # fmt: skip
    running.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def data_set_shortcut(args: argparse.Namespace) -> bool:
    """``--manifest NAME[:VARIANT]`` naming a registered data set (the toy world's ``toy[:PRESET]``):
    its training manifest, species table and (unless named) models. False when no data set is named."""
    from birdsearch.model.hub import DEFAULT_STUDENT, DEFAULT_TEACHER
    from birdsearch.model.registry import data_set

    bundle = data_set(args.manifest, progress=not args.no_progress)
    if bundle is None:
        return False
    args.manifest, args.taxa = str(bundle.train_manifest), args.taxa or str(bundle.taxa)
    if args.teacher == DEFAULT_TEACHER and "teacher" in bundle.models:
        args.teacher = bundle.models["teacher"]
    if args.student == DEFAULT_STUDENT and "student" in bundle.models:
        args.student = bundle.models["student"]
    return True


def run(args: argparse.Namespace) -> int:
    from birdsearch.model.distill.trainer import DistillConfig, distill

    data_set_shortcut(args)
    config = config_from_args(
        DistillConfig,
        args,
        warmup_fraction=args.warmup,
        freeze_batchnorm=not args.no_freeze_batchnorm,
        check_audio=not args.no_check_audio,
        progress=not args.no_progress,
        species_classifier=not args.no_species_classifier,
    )
    result = distill(config)
    summary = {
        "encoder": str(result.encoder_dir) if result.encoder_dir else None,
        "steps": result.steps,
        "total_steps": result.total_steps,
        "validation": result.history[-1] if result.history else None,
        "default_mode": default_mode_of(result.encoder_dir),
    }
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0


def default_mode_of(encoder_dir: Any) -> dict[str, Any] | None:
    """The query mode the encoder's card records as its default, and why (None before the run finished)."""
    if encoder_dir is None:
        return None
    from birdsearch.model.encoder import read_card
    from birdsearch.model.species_head import recorded_modes

    return recorded_modes(read_card(encoder_dir))
