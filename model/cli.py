"""``birdsearch models download|verify``: provision weights on a connected machine, check them anywhere."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from birdsearch.cli_args import add_model_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="download or verify the teacher and student weights")
    actions = parser.add_subparsers(dest="models_action", metavar="ACTION", required=True)

    download = actions.add_parser(
        "download", help="fetch weights into the Hugging Face cache (run on a connected machine)"
    )
    add_model_args(download)
    download.set_defaults(func=run_download)

    verify = actions.add_parser("verify", help="check that weights are on this machine and load")
    add_model_args(verify)
    verify.add_argument("--checkpoint", help="also verify a distilled encoder directory")
    verify.add_argument("--load", action="store_true", help="load each model and embed a test input")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(func=run_verify)


def run_download(args: argparse.Namespace) -> int:
    from birdsearch.model import hub

    for kind, spec in (("teacher", args.teacher), ("student", args.student)):
        path = hub.download(spec, kind)
        sys.stdout.write(f"{kind}: {spec} -> {path}\n")
    sys.stdout.write(
        "Copy the Hugging Face cache (HF_HOME, default ~/.cache/huggingface) to offline machines, "
        "or pass --teacher/--student local-dir:PATH there.\n"
    )
    return 0


def verify_one(kind: str, spec: str, load: bool, device: str) -> dict[str, Any]:
    """Resolve (never download), hash the weights, optionally load and embed one input."""
    from birdsearch.errors import BirdsearchError
    from birdsearch.model import hub

    report: dict[str, Any] = {"kind": kind, "spec": spec}
    try:
        resolved = hub.resolve(spec, kind)  # type: ignore[arg-type]
        report.update(path=str(resolved.path), weights=resolved.weights_file.name)
        report["weights_sha256"] = hub.weights_sha256(resolved.weights_file)
        if load:
            report["dim"] = load_and_embed(kind, spec, device)
        report["ok"] = True
    except BirdsearchError as e:
        report.update(ok=False, error=str(e))
    return report


def load_and_embed(kind: str, spec: str, device: str) -> int:
    import numpy as np

    if kind == "teacher":
        from birdsearch.model.teacher import Teacher

        teacher = Teacher.load(spec, device)
        return int(teacher.embed_texts(["a photo of a bird."]).shape[1])
    from birdsearch.model.student import Student

    student = Student.load(spec, device)
    window = np.zeros((1, student.front_end_config.window_samples), dtype=np.float32)
    window[0, ::97] = 0.1  # any non-constant signal
    return int(student.embed_windows(window).shape[1])


def verify_checkpoint(path: str, device: str) -> dict[str, Any]:
    from birdsearch.errors import BirdsearchError
    from birdsearch.model.encoder import load_encoder

    report: dict[str, Any] = {"kind": "distilled encoder", "spec": path}
    try:
        encoder = load_encoder(path, device)
        report.update(ok=True, dim=encoder.dim, teacher=encoder.card.teacher.get("id"), path=path)
    except BirdsearchError as e:
        report.update(ok=False, error=str(e))
    return report


def run_verify(args: argparse.Namespace) -> int:
    reports = [verify_one(kind, spec, args.load, args.device) for kind, spec in
               (("teacher", args.teacher), ("student", args.student))]  # fmt: skip
    if args.checkpoint:
        reports.append(verify_checkpoint(args.checkpoint, args.device))
    if args.json:
        sys.stdout.write(json.dumps(reports, indent=2) + "\n")
    else:
        for r in reports:
            status = "ok " if r["ok"] else "MISSING"
            detail = r.get("path", "") if r["ok"] else r["error"]
            sys.stdout.write(f"{status} {r['kind']:<17} {r['spec']}\n    {detail}\n")
    return 0 if all(r["ok"] for r in reports) else 1
