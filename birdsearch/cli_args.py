"""Command-line arguments that several subcommands share, defined once.

Imported by each subcommand's ``cli.py``; it imports only down (the default model ids live in
``birdsearch.model.hub``), so that no subcommand reaches back into the console script.
"""

from __future__ import annotations

import argparse
import os

from birdsearch.model.hub import DEFAULT_STUDENT, DEFAULT_TEACHER


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
