"""Command-line arguments that several subcommands share, defined once.

Imported by each subcommand's ``cli.py``; it imports only down (the default model ids live in
``birdsearch.model.hub``), so that no subcommand reaches back into the console script.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, TypeVar

from birdsearch.model.hub import DEFAULT_STUDENT, DEFAULT_TEACHER

Config = TypeVar("Config")
# The query modes the subcommands offer (``--mode``), spelled as the engine's ``MODES`` (a test keeps the
# two equal; the engine's settings are too heavy to import for parsing arguments).
QUERY_MODES = ("distilled", "cascade", "classifier", "hybrid")


def add_model_args(parser: argparse.ArgumentParser, teacher: bool = True, student: bool = True) -> None:
    """The model arguments shared by every subcommand that loads a model."""
    if teacher:
        parser.add_argument(
            "--teacher",
            default=os.environ.get("BIRDSEARCH_TEACHER", DEFAULT_TEACHER),
            help="image-text teacher: 'hf-hub:org/repo', 'local-dir:/path' or 'toy' (default: %(default)s)",
        )
    if student:
        parser.add_argument(
            "--student",
            default=os.environ.get("BIRDSEARCH_STUDENT", DEFAULT_STUDENT),
            help="audio-text student: a Hugging Face id, 'hf-hub:org/repo', 'local-dir:/path', a directory "
            "or 'toy' (default: %(default)s)",
        )
    parser.add_argument(
        "--device", default=os.environ.get("BIRDSEARCH_DEVICE", "auto"), help="auto, cpu, cuda or cuda:N"
    )


def config_from_args(cls: type[Config], args: argparse.Namespace, **overrides: Any) -> Config:
    """A dataclass config from the parsed arguments: each field takes the argument of the same name.

    Fields with no argument of their name keep their default; ``overrides`` set the ones whose
    argument is spelled differently (``--no-progress`` for ``progress``), so a new option needs no
    second list of names to keep in step.
    """
    given = vars(args)
    values = {f.name: given[f.name] for f in dataclasses.fields(cls) if f.name in given}  # type: ignore[arg-type]
    return cls(**{**values, **overrides})
