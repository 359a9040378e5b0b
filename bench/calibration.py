"""Calibration of window species confidences on the toy world, for the distilled encoder and the cascade.

1. A Platt fit per mode (``birdsearch.engine.calibrate.fit_engine``) on the distillation's
   validation recordings (``distill.csv`` rows of split ``val``) plus background-only recordings of
   the "fit" subset, through the service's path: windows, embedding (the cascade's species head
   included), search in the world's indexed gallery, the species rule.
2. Held out from the fit, per mode:
   - expected calibration error (15 bins) over every scored (window, species) pair of the query
     recordings, the soundscapes and the "test" background-only recordings;
   - precision and recall on soundscape windows at each threshold (``--thresholds``): a detection
     is one of a window's ``--species-k`` best species with a confidence at least the threshold; it
     is right when that species has a calling bout overlapping the window; recall counts the
     (window, species) pairs with a bout that were detected;
   - false detections per hour on the "test" background-only recordings (any detection is false);
   - the same figures with the raw pooled cosine score thresholded instead (``--raw-threshold``, the
     old ``analyze --min-conf`` default), to show what the calibration changes.

The soundscapes are the world's own plus ``--soundscapes`` more drawn like them
(``birdsearch.toy.background``), the background-only recordings likewise; all are cached under
``--work``. The calibration file is written there too.

    python bench/calibration.py                           # small preset
    python bench/calibration.py --json bench/results/calibration.json
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("calibration")
MODES = ("distilled", "cascade")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small", help="toy world preset (default: small)")
    parser.add_argument(
        "--thresholds", default="0.1,0.3,0.5", help="confidence thresholds (the first is the default)"
    )
    parser.add_argument(
        "--raw-threshold", type=float, default=0.1, help="raw score threshold to compare with"
    )
    parser.add_argument(
        "--species-k", type=int, default=5, help="species per window at most (analyze's default)"
    )
    parser.add_argument("--soundscapes", type=int, default=10, help="extra test soundscapes to draw")
    parser.add_argument(
        "--background-fit", type=int, default=8, help="30 s background-only recordings to fit on"
    )
    parser.add_argument(
        "--background-test", type=int, default=20, help="60 s background-only recordings to test on"
    )
    parser.add_argument("--work", type=Path, help="cache folder (default: <world>/bench-calibration)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    return parser.parse_args()


def overlapping(annotations: list[tuple[float, float, str]], start: float, end: float) -> set[str]:
    return {species for s, e, species in annotations if s < end and e > start}


def detections(values: np.ndarray, k: int, threshold: float) -> list[int]:
    """Rows of a window's ``k`` best species whose value reaches ``threshold``."""
    from birdsearch.engine.ranking import top_species

    return [int(r) for r in top_species(values, k) if values[r] >= threshold]


def evaluate_mode(engine: Any, platt: Any, data: dict[str, Any], args: argparse.Namespace,
                  rule: str) -> dict[str, Any]:  # fmt: skip
    from birdsearch.engine.calibrate import window_scores
    from birdsearch.model.calibration import describe, expected_calibration_error, labelled_positions

    rows = {r.scientific: i for i, r in enumerate(engine.served.species)}
    pairs_c, pairs_y = [], []  # held-out (confidence, label) of every scored (window, species)

    def keep(per_window: np.ndarray, present: list[set[int]]) -> None:
        rows_, cols, labels = labelled_positions(per_window, present)
        pairs_c.append(platt(per_window)[rows_, cols])
        pairs_y.append(labels)

    thresholds = [float(t) for t in args.thresholds.split(",")]
    counts = {key: {"tp": 0, "fp": 0, "fn": 0, "bg": 0} for key in [*thresholds, "raw"]}
    for path, species in data["queries"]:
        per_window, _ = window_scores(engine, path, rule)
        keep(per_window, [{rows[species]}] * len(per_window))
    for path, bouts in data["soundscapes"]:
        per_window, starts = window_scores(engine, path, rule)
        window_s = engine.front_end.window_s
        present = [{rows[n] for n in overlapping(bouts, t, t + window_s)} for t in starts]
        keep(per_window, present)
        conf = platt(per_window)
        for key in counts:
            values, threshold = (per_window, args.raw_threshold) if key == "raw" else (conf, key)
            for w, truth in enumerate(present):
                found = set(detections(values[w], args.species_k, threshold))
                counts[key]["tp"] += len(found & truth)
                counts[key]["fp"] += len(found - truth)
                counts[key]["fn"] += len(truth - found)
    hours = 0.0
    for path in data["background_test"]:
        per_window, starts = window_scores(engine, path, rule)
        hours += len(starts) * engine.front_end.window_s / 3600
        keep(per_window, [set()] * len(per_window))
        conf = platt(per_window)
        for key in counts:
            values, threshold = (per_window, args.raw_threshold) if key == "raw" else (conf, key)
            counts[key]["bg"] += sum(len(detections(v, args.species_k, threshold)) for v in values)
    conf, labels = np.concatenate(pairs_c), np.concatenate(pairs_y)
    out: dict[str, Any] = {
        "fit": {**describe(platt), **platt.facts},
        "ece": expected_calibration_error(conf, labels),
        "held_out_pairs": int(conf.size), "held_out_positives": int(labels.sum()),
        "background_hours": hours, "at": {},
    }  # fmt: skip
    for key, c in counts.items():
        name = f"raw score >= {args.raw_threshold:g}" if key == "raw" else f"confidence >= {key:g}"
        out["at"][name] = {
            "precision": c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else None,  # None: no detection
            "recall": c["tp"] / max(1, c["tp"] + c["fn"]),
            "false_per_hour": c["bg"] / hours if hours else float("nan"),
        }
    return out


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from birdsearch.engine.calibrate import fit_engine
    from birdsearch.engine.config import EngineConfig
    from birdsearch.engine.detector import Detector
    from birdsearch.engine.ranking import DEFAULT_SPECIES_RULE
    from birdsearch.model.calibration import save_calibration
    from birdsearch.toy import plugin
    from birdsearch.toy.background import background_only, calibration_clips, extra_soundscapes
    from birdsearch.toy.cli import build_index, distil
    from birdsearch.toy.world import ensure_world

    plugin.register()  # the toy world's model specs
    started = time.perf_counter()
    world = ensure_world(args.preset, progress=False)
    work = args.work or world.root / "bench-calibration"
    built = argparse.Namespace(rebuild=False, device="cpu")
    encoder = distil(world, world.student_spec, world.root / "demo" / "encoder-realistic", built)
    index_root = build_index(world, work / "index", built)
    with open(world.soundscape_annotations, newline="") as f:
        own: dict[str, list[tuple[float, float, str]]] = {}
        for r in csv.DictReader(f):
            own.setdefault(r["file"], []).append((float(r["start_s"]), float(r["end_s"]), r["species"]))
    data = {
        "queries": [(r["path"], r["species"]) for r in world.read_manifest(world.query_manifest)],
        "soundscapes": [*own.items(), *extra_soundscapes(world, work / "audio", args.soundscapes, "test")],
        "background_test": background_only(world, work / "audio", args.background_test, 60.0, "test"),
    }
    fit_clips = calibration_clips(world, work / "audio", args.background_fit)
    (work / "calibration.json").unlink(missing_ok=True)  # this run's fits only
    results: dict[str, Any] = {}
    for mode in MODES:
        config = EngineConfig(
            index_root=index_root, checkpoint=str(encoder), student=world.student_spec, device="cpu"
        )
        engine = Detector.load(config, mode)
        platt = fit_engine(engine, fit_clips, DEFAULT_SPECIES_RULE)
        save_calibration(work / "calibration.json", mode, platt)
        results[mode] = evaluate_mode(engine, platt, data, args, DEFAULT_SPECIES_RULE)
        log.info("%s: %s", mode, json.dumps(results[mode], default=str))
    report = {
        "preset": args.preset, "species_rule": DEFAULT_SPECIES_RULE, "species_k": args.species_k,
        "fit_clips": len(fit_clips) - args.background_fit, "fit_background": args.background_fit,
        "queries": len(data["queries"]), "soundscapes": len(data["soundscapes"]),
        "background_test": len(data["background_test"]), "modes": results,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "wall_s": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    print_table(report)
    return 0


def print_table(report: dict[str, Any]) -> None:
    """The BENCHMARKS.md rows (stdout is this script's product)."""
    lines = [
        "| mode | threshold | ECE | precision | recall | false detections / h |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for mode, r in report["modes"].items():
        for name, at in r["at"].items():
            ece = "—" if name.startswith("raw") else f"{r['ece']:.3f}"  # the raw score is no probability
            precision = "—" if at["precision"] is None else f"{at['precision']:.2f}"
            lines.append(f"| {mode} | {name.replace('>=', '≥')} | {ece} | {precision} | {at['recall']:.2f} | "
                         f"{at['false_per_hour']:.0f} |")  # fmt: skip
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
