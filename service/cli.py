"""``birdsearch serve`` (the query service) and ``birdsearch query FILE`` (its client)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

from birdsearch.cli_args import QUERY_MODES

# serve's flags that are settings too: flag given -> exported as BIRDSEARCH_<NAME> for every worker.
SERVE_SETTINGS = (
    "index_root", "checkpoint", "student", "device", "max_batch", "max_wait_ms", "admin_key", "species_list",
    "calibration",
)  # fmt: skip


def register(subparsers: Any) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the query service (HTTP API and web page)",
        description="Run the query service. Every setting is read from BIRDSEARCH_* environment variables "
        "(and the file named by BIRDSEARCH_CONFIG); flags given here override them.",
    )
    serve.add_argument("--host", help="address to bind (default: BIRDSEARCH_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: BIRDSEARCH_PORT or 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default: BIRDSEARCH_WORKERS or 1)")
    serve.add_argument(
        "--index-root", help="index root holding the published versions (BIRDSEARCH_INDEX_ROOT)"
    )
    serve.add_argument(
        "--checkpoint", help="distilled encoder directory; empty: the cascade (BIRDSEARCH_CHECKPOINT)"
    )
    serve.add_argument("--student", help="student spec for the cascade (BIRDSEARCH_STUDENT)")
    serve.add_argument("--device", help="auto, cpu, cuda or cuda:N (BIRDSEARCH_DEVICE)")
    serve.add_argument("--max-batch", type=int, help="windows per forward pass (BIRDSEARCH_MAX_BATCH)")
    serve.add_argument("--max-wait-ms", type=float, help="batching wait (BIRDSEARCH_MAX_WAIT_MS)")
    serve.add_argument("--admin-key", help="enables /admin routes (BIRDSEARCH_ADMIN_KEY)")
    serve.add_argument("--species-list", help="only these species: plain names or BirdNET lines "
                       "(BIRDSEARCH_SPECIES_LIST); a request's own species_list wins")  # fmt: skip
    serve.add_argument(
        "--calibration", help="calibration file of the modes' confidences (BIRDSEARCH_CALIBRATION)"
    )
    serve.set_defaults(func=run_serve)

    query = subparsers.add_parser(
        "query", help="send a recording to a running service and print the species and photos"
    )
    query.add_argument("file", help="the recording (wav, flac, ogg, opus or mp3)")
    query.add_argument("--url", help="the service (default: BIRDSEARCH_URL or http://127.0.0.1:8000)")
    query.add_argument("--json", action="store_true", help="print the server's JSON answer")
    query.add_argument("-k", "--k", type=int, default=12, help="photos (default: %(default)s)")
    query.add_argument("--species-k", type=int, default=5, help="species (default: %(default)s)")
    query.add_argument(
        "--mode",
        choices=("auto", *QUERY_MODES),
        default="auto",
        help="auto: the server's default (GET /version: default_mode and models)",
    )
    query.add_argument("--window-s", type=float, help="window length, seconds (default: the model's)")
    query.add_argument("--hop-s", type=float, help="hop between windows, seconds (default: the window)")
    query.add_argument("--species", action="append", default=[], help="only this species (repeatable)")
    query.add_argument("--genus", help="only this genus")
    query.add_argument("--family", help="only this family")
    query.add_argument("--order", help="only this order")
    query.add_argument("--species-list", help="only these species: a list file (plain names or BirdNET lines), "
                       "checked against the server's species (GET /species)")  # fmt: skip
    query.add_argument("--min-conf", type=float,
                       help="only species whose calibrated confidence reaches this (0..1; default: the server's, "
                       "chosen with its open-set gate); none left: abstains")  # fmt: skip
    query.add_argument("--include-abstained", action="store_true",
                       help="also list the nearest species where nothing was detected, marked as such")  # fmt: skip
    query.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default: %(default)s)")
    query.set_defaults(func=run_query)


def export_settings(args: argparse.Namespace) -> None:
    """Flags given on the command line become environment settings, which every worker process reads."""
    for name in SERVE_SETTINGS:
        value = getattr(args, name, None)
        if value is not None:
            os.environ[f"BIRDSEARCH_{name.upper()}"] = str(value)
    for name in ("host", "port", "workers"):
        value = getattr(args, name, None)
        if value is not None:
            os.environ[f"BIRDSEARCH_{name.upper()}"] = str(value)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from birdsearch.service.settings import load_settings

    export_settings(args)
    settings = load_settings()  # refuses bad settings here, before any worker starts
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker counts in its own files; /metrics (from any worker) sums them.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="birdsearch-metrics-")
    uvicorn.run(
        "birdsearch.service.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level="warning" if args.quiet else "info",
        timeout_graceful_shutdown=30,
    )
    return 0


def run_query(args: argparse.Namespace) -> int:
    from birdsearch.client import query_file, render_table, resolve_list

    answer = query_file(
        args.file,
        url=args.url,
        timeout_s=args.timeout,
        k=args.k,
        species_k=args.species_k,
        mode=args.mode,
        window_s=args.window_s,
        hop_s=args.hop_s,
        species=args.species,
        genus=args.genus,
        family=args.family,
        order=args.order,
        min_conf=args.min_conf,
        include_abstained=args.include_abstained or None,
        species_list=resolve_list(args.species_list, args.url, args.timeout) if args.species_list else None,
    )
    sys.stdout.write(json.dumps(answer, indent=2) + "\n" if args.json else render_table(answer))
    return 0
