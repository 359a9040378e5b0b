"""Fit, find and apply the calibration of a query mode's window species scores.

A window's species score depends on the model, the gallery and the species rule, so the Platt fit
(``birdsearch.model.calibration``) is made through the engine's own path: labelled recordings held
out from training (the distillation's validation split) and background-only recordings are decoded
and windowed (``batch.read_all``), embedded (the cascade's species head included), searched in
the index and pooled by the species rule (``Detector.score``), exactly as the windows of
``POST /query`` and ``analyze`` are before their detections are made.

Where the engine finds it, and how answers use it: ``birdsearch.engine.confidence``.

    engine = Detector.load(EngineConfig(index_root=root, checkpoint=enc))
    platt = fit_engine(engine, [(path, "Turdus migratorius"), ..., (wind_path, None)])
    save_calibration(Path(enc) / "calibration.json", "distilled", platt)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from birdsearch.engine.config import EngineConfig
from birdsearch.engine.detector import Detector
from birdsearch.errors import BirdsearchError, ConfigError
from birdsearch.model.calibration import (
    FILE_NAME,
    Platt,
    choose_platt,
    describe,
    examples,
    expected_calibration_error,
)

log = logging.getLogger(__name__)


def window_scores(engine: Detector, path: str | Path, rule: str, candidates: int = 200,
                  window_s: float | None = None, hop_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(W, S) species scores of one recording's windows and their (W,) start times, as ``analyze`` scores them."""
    from birdsearch.engine.batch import read_all
    from birdsearch.model import audio

    fe = engine.front_end
    window_s = window_s or fe.window_s
    windows, starts_s, _ = read_all(path, fe.sample_rate, window_s, hop_s or window_s, fe.window_samples,
                                    audio.AudioLimits())  # fmt: skip
    vectors = np.concatenate(
        [engine.vectors(engine.embedder(windows[i : i + 8])) for i in range(0, len(windows), 8)]
    )
    return engine.score(vectors, candidates, rule).species.per_window, starts_s


def labelled_windows(engine: Detector, clips: Sequence[tuple[str | Path, str | None]], rule: str,
                     candidates: int = 200) -> tuple[list[np.ndarray], list[list[set[int]]]]:  # fmt: skip
    """Each clip's (W, S) window scores and, per window, the species rows calling in it.

    A clip is (path, the species calling throughout it, or None for background only).
    """
    rows = {record.scientific: i for i, record in enumerate(engine.served.species)}
    per_windows, presents = [], []
    for path, species in clips:
        if species is not None and species not in rows:
            raise ConfigError(
                f"calibration clip {path}: species {species!r} is not in index {engine.served.name}"
            )
        per_window, _ = window_scores(engine, path, rule, candidates)
        per_windows.append(per_window)
        presents.append([set() if species is None else {rows[species]} for _ in range(len(per_window))])
    return per_windows, presents


def fit_engine(engine: Detector, clips: Sequence[tuple[str | Path, str | None]], rule: str,
               candidates: int = 200) -> Platt:  # fmt: skip
    """``engine``'s calibration from labelled and background-only ``clips`` (features chosen by cross-validation)."""
    per_windows, presents = labelled_windows(engine, clips, rule, candidates)
    platt = choose_platt(per_windows, presents)
    x, labels, _ = examples(per_windows, presents, platt.features)
    facts = {
        **platt.facts,
        "clips": len(clips),
        "background_clips": sum(species is None for _, species in clips),
        "species_rule": rule,
        "candidates_per_window": candidates,
        "index": engine.served.name,
        "model": engine.embedder.facts.id,
        "ece_fit": round(expected_calibration_error(platt.apply(x), labels), 5),
    }
    log.info("calibration of %s on %d scores: %s (ECE %.4f on the fitting data)",
             engine.embedder.mode, labels.size, describe(platt), facts["ece_fit"])  # fmt: skip
    return Platt(platt.weights, platt.bias, platt.features, facts)


# -- python -m birdsearch.engine.calibrate -------------------------------------------------------


def read_clips(manifest: Path) -> list[tuple[str, str]]:
    """(path, species) rows of a table (CSV, TSV or Parquet) with ``path`` and ``species`` columns; only
    ``val`` rows when it has ``split``.

    Relative paths are under the manifest's folder.
    """
    from birdsearch.model.tables import read_table

    rows = read_table(manifest, "calibration clips").to_dict("records")
    if not rows or not {"path", "species"} <= set(rows[0]):
        raise ConfigError(
            f"calibration clips {manifest}: needs a header with 'path' and 'species' and some rows"
        )
    if "split" in rows[0]:
        rows = [r for r in rows if r["split"] == "val"]
        if not rows:
            raise ConfigError(
                f"calibration clips {manifest}: no row of split 'val' (clips held out from training)"
            )
    return [(str(manifest.parent / r["path"]), str(r["species"]).strip()) for r in rows]


def main(argv: Sequence[str] | None = None) -> int:
    """Fit a mode's calibration on held-out clips (and background-only recordings) and write it."""
    import argparse
    import glob

    from birdsearch.engine.ranking import DEFAULT_SPECIES_RULE
    from birdsearch.model.calibration import save_calibration
    from birdsearch.model.hub import DEFAULT_STUDENT

    parser = argparse.ArgumentParser(prog="python -m birdsearch.engine.calibrate", description=main.__doc__)
    parser.add_argument(
        "--index-root", type=Path, required=True, help="the published index the service searches"
    )
    parser.add_argument("--checkpoint", default="", help="distilled encoder folder (mode distilled)")
    parser.add_argument("--student", default=DEFAULT_STUDENT, help="the cascade's student (mode cascade)")
    parser.add_argument("--mode", choices=("auto", "distilled", "cascade"), default="auto")
    parser.add_argument(
        "--clips",
        type=Path,
        required=True,
        help="table (CSV, TSV, Parquet) path,species[,split]: held-out labelled clips",
    )
    parser.add_argument("--background", action="append", default=[],
                        help="glob of background-only recordings (no bird), repeatable")  # fmt: skip
    parser.add_argument("--species-rule", default=DEFAULT_SPECIES_RULE, help="the service's species rule")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path,
                        help=f"calibration file (default: {FILE_NAME} beside the encoder, or in the index root)")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    background = sorted({p for pattern in args.background for p in glob.glob(pattern, recursive=True)})
    try:
        if args.background and not background:
            raise ConfigError(f"--background {args.background}: no file matches")
        clips: list[tuple[str | Path, str | None]] = [
            *read_clips(args.clips),
            *[(p, None) for p in background],
        ]
        config = EngineConfig(index_root=args.index_root, checkpoint=args.checkpoint, student=args.student,
                              device=args.device)  # fmt: skip
        engine = Detector.load(config, args.mode)
        platt = fit_engine(engine, clips, args.species_rule, config.candidates_per_window)
    except BirdsearchError as e:
        log.error("error: %s", e)
        return 2
    mode = engine.embedder.mode
    out = args.out or (Path(args.checkpoint) if mode == "distilled" else args.index_root) / FILE_NAME
    log.info("calibration of %s written to %s", mode, save_calibration(out, mode, platt))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
