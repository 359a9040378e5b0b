"""The ``birdsearch`` console script: one parser, subcommands that live beside the code they run.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``; it adds its parser and sets
``func`` to a function that does the heavy imports (torch, open_clip, ...) itself, so that
``birdsearch --help`` answers at once. Arguments several subcommands share are in
``birdsearch.cli_args``; nothing imports this module. ``main`` plugs the toy world in first, so that
every subcommand accepts ``toy`` model specs and data sets.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from birdsearch import __version__
from birdsearch.cpus import available_cpus
from birdsearch.errors import BirdsearchError
from birdsearch.toy import plugin as toy_plugin

COMMAND_MODULES = (
    "birdsearch.toy.cli",  # demo
    "birdsearch.indexer.cli",  # index, reindex
    "birdsearch.service.cli",  # serve, query
    "birdsearch.analyze.cli",  # analyze
    "birdsearch.model.distill.cli",  # distill
    "birdsearch.model.evaluate.cli",  # evaluate
    "birdsearch.model.cli",  # models
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="birdsearch",
        description="Bird recording in, photographs of the species that made the sound out.",
    )
    parser.add_argument("--version", action="version", version=f"birdsearch {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def configure_logging(verbose: int, quiet: bool) -> None:
    """Our loggers at the chosen level; third-party ones (open_clip logs INFO on the root logger,
    Ray, httpx, huggingface_hub) at WARNING unless -vv asks for everything."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose >= 2 else logging.INFO
    root_level = logging.DEBUG if verbose >= 2 else logging.WARNING
    logging.basicConfig(
        level=root_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("birdsearch").setLevel(level)


def cap_torch_threads() -> None:
    """Size torch's thread pool to the cores this process may use, unless the user chose a count.

    torch counts the host's cores when it is first imported; in a container with a CPU quota that is
    too many, and the surplus threads wait on throttled ones. The commands import torch after this runs.
    """
    os.environ.setdefault("OMP_NUM_THREADS", str(available_cpus()))


def main(argv: Sequence[str] | None = None) -> int:
    cap_torch_threads()
    toy_plugin.register()  # cheap: the world is built only when a toy spec or data set is used
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    configure_logging(args.verbose, args.quiet)
    try:
        result = args.func(args)
    except BirdsearchError as e:
        sys.stderr.write(f"birdsearch {args.command}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
