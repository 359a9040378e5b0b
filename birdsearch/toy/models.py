"""``toy`` model specs: which world and which student a spec names, built on first use.

Spec grammar (``birdsearch.model.hub`` passes the part after ``toy:``): ``toy`` is the default
world's teacher or realistic student; a variant is dash-separated words, a world preset
("default", "small") and, for the student, a text side ("realistic", "perfect"), in any order:
``toy:perfect``, ``toy:small``, ``toy:small-perfect``. The teacher ignores the text side.
"""

from __future__ import annotations

from pathlib import Path

from birdsearch.errors import ConfigError
from birdsearch.toy.config import PRESETS
from birdsearch.toy.world import STUDENT_VARIANTS, ensure_world, open_world

KINDS = ("teacher", "student")


def parse_variant(variant: str | None) -> tuple[str, str]:
    """``None``, "perfect", "small-perfect", ... to (world preset, student text side)."""
    world, text = "default", "realistic"
    for word in (variant or "").split("-") if variant else []:
        if word in PRESETS:
            world = word
        elif word in STUDENT_VARIANTS:
            text = word
        else:
            raise ConfigError(
                f"unknown toy model variant {variant!r}: use 'toy', or 'toy:' followed by a world "
                f"({', '.join(PRESETS)}) and/or a student text side ({', '.join(STUDENT_VARIANTS)}) "
                "joined by '-', e.g. 'toy:perfect' or 'toy:small-perfect'"
            )
    return world, text


def toy_model_dir(kind: str, variant: str | None = None) -> Path:
    """The directory of a toy model, built (with the world data it needs) if it is missing.

    Args:
        kind: "teacher" or "student".
        variant: what follows ``toy:`` in the spec, or None.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown model kind {kind!r}: use 'teacher' or 'student'")
    world_name, text = parse_variant(variant)
    if kind == "teacher":
        stage, directory = "teacher", open_world(world_name).teacher_dir
    else:
        stage, directory = f"student-{text}", open_world(world_name).student_dir_for(text)
    ensure_world(world_name, stages=(stage,))
    return directory
