"""Fit a query mode's calibration and open-set gate through the engine's own path.

A window's species score depends on the model, the gallery and the species rule, so the Platt fit
(``birdsearch.model.calibration``) is made through the engine's own path: labelled recordings held
out from training (the distillation's validation split), background-only recordings and recordings
of what the gallery does not hold (other birds, sounds that are not birds, other recorders) are
decoded and windowed (``batch.read_all``), embedded (the cascade's species head included),
searched in the index and pooled by the species rule (``Detector.score``), exactly as the windows of
``POST /query`` and ``analyze`` are before their detections are made. Background and outside
windows are negatives for every species.

The same windows then fit the mode's open-set gate (``birdsearch.model.novelty.fit_open_set``): the
novelty signal that best tells the in-gallery windows from the outside ones, its threshold and the
``min_conf`` that reaches a stated precision on them. Signals that measure against reference windows
need the model's (``novelty_reference.*`` in the mode's folder: ``birdsearch distill`` writes it
beside an encoder; ``build_mode_reference`` makes one from a table of labelled training recordings
for a model that has none, or for the cascade).

Where the engine finds them, and how answers use them: ``birdsearch.engine.confidence`` and
``birdsearch.engine.gate``.

    engine = Detector.load(EngineConfig(index_root=root, checkpoint=enc), gate=False)
    platt, gate = fit_mode(engine, [(path, "Turdus migratorius"), (wind, None), (rain, None, "non_bird")])
    save_calibration(Path(enc) / "calibration.json", "distilled", platt)
    save_open_set(Path(enc) / "open_set.json", "distilled", gate)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from birdsearch.engine.config import MODES, EngineConfig
from birdsearch.engine.detector import Detector
from birdsearch.engine.embedders import split_outputs
from birdsearch.engine.ranking import DEFAULT_SPECIES_RULE
from birdsearch.errors import BirdsearchError, ConfigError
from birdsearch.model.calibration import (
    FILE_NAME,
    Platt,
    choose_platt,
    describe,
    examples,
    expected_calibration_error,
)
from birdsearch.model.novelty import (
    BACKGROUND,
    IN_GALLERY,
    Evidence,
    OpenSet,
    Reference,
    available_candidates,
    fit_open_set,
)

log = logging.getLogger(__name__)

# A clip: (path, the species calling throughout it or None) and, for a recording of what the gallery
# does not hold, its group ("out_of_gallery", "non_bird", "shifted", ...; None is background).
Clip = tuple[str | Path, str | None] | tuple[str | Path, str | None, str]


def model_outputs(engine: Detector, path: str | Path, window_s: float | None = None,
                  hop_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(W, dim + tower) model outputs of one recording's windows, cut as ``analyze`` cuts them, and their starts."""
    from birdsearch.engine.batch import read_all
    from birdsearch.model import audio

    fe = engine.front_end
    window_s = window_s or fe.window_s
    windows, starts_s, _ = read_all(path, fe.sample_rate, window_s, hop_s or window_s, fe.window_samples,
                                    audio.AudioLimits())  # fmt: skip
    return np.concatenate([engine.embedder(windows[i : i + 8]) for i in range(0, len(windows), 8)]), starts_s


def window_scores(engine: Detector, path: str | Path, rule: str, candidates: int = 200,
                  window_s: float | None = None, hop_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(W, S) species scores of one recording's windows and their (W,) start times, as ``analyze`` scores them."""
    outputs, starts = model_outputs(engine, path, window_s, hop_s)
    return engine.score(outputs, candidates, rule).species.per_window, starts


@dataclass
class Labelled:
    """Each clip's windows: species scores, the species calling, the clip's group, the model's outputs."""

    per_windows: list[np.ndarray]  # (W, S) window species scores
    presents: list[list[set[int]]]  # per window, the species rows calling in it
    groups: list[str]  # "in_gallery", "background" or an outside group
    outputs: list[np.ndarray]  # (W, dim + tower) model outputs


def labelled_windows(engine: Detector, clips: Sequence[Clip], rule: str, candidates: int = 200) -> Labelled:
    """Each clip's windows, scored (a clip names its species, or None for background or outside audio)."""
    rows = {record.scientific: i for i, record in enumerate(engine.served.species)}
    out = Labelled([], [], [], [])
    for clip in clips:
        path, species = clip[0], clip[1]
        if species is not None and species not in rows:
            raise ConfigError(
                f"calibration clip {path}: species {species!r} is not in index {engine.served.name}"
            )
        outputs, _ = model_outputs(engine, path)
        out.outputs.append(outputs)
        out.per_windows.append(engine.score(outputs, candidates, rule).species.per_window)
        out.presents.append([set() if species is None else {rows[species]} for _ in range(len(outputs))])
        out.groups.append(clip[2] if len(clip) > 2 else IN_GALLERY if species is not None else BACKGROUND)  # type: ignore[misc]
    return out


def fit_calibration(engine: Detector, labelled: Labelled, rule: str, candidates: int) -> Platt:
    """The Platt fit on every clip's windows (features chosen by cross-validation), with its facts."""
    platt = choose_platt(labelled.per_windows, labelled.presents)
    x, labels, _ = examples(labelled.per_windows, labelled.presents, platt.features)
    facts = {
        **platt.facts,
        "clips": len(labelled.groups),
        "background_clips": labelled.groups.count(BACKGROUND),
        "outside_clips": sum(g not in (IN_GALLERY, BACKGROUND) for g in labelled.groups),
        "species_rule": rule,
        "candidates_per_window": candidates,
        "index": engine.served.name,
        "model": engine.embedder.facts.id,
        "ece_fit": round(expected_calibration_error(platt.apply(x), labels), 5),
    }
    log.info("calibration of %s on %d scores: %s (ECE %.4f on the fitting data)",
             engine.mode, labels.size, describe(platt), facts["ece_fit"])  # fmt: skip
    return Platt(platt.weights, platt.bias, platt.features, facts)


def fit_engine(engine: Detector, clips: Sequence[Clip], rule: str, candidates: int = 200) -> Platt:
    """``engine``'s calibration from labelled, background-only and outside ``clips``."""
    return fit_calibration(engine, labelled_windows(engine, clips, rule, candidates), rule, candidates)


def prompt_signal(engine: Detector) -> Any:
    """The cascade's prompt signal (its student's text tower against the index's species); None otherwise."""
    from birdsearch.model.novelty import NON_BIRD_PROMPTS, PromptNovelty

    head = engine.served.heads.get("cascade")
    if engine.mode != "cascade" or head is None:
        return None
    query = head.query
    vectors = engine.embedder.student.embed_texts(list(NON_BIRD_PROMPTS)).numpy()
    return PromptNovelty(vectors, query.student_species.numpy(), query.logit_scale)


def fit_gate(engine: Detector, labelled: Labelled, platt: Platt, reference: Reference | None, keep: float = 0.95,
             precision: float = 0.7, species_k: int = 5) -> OpenSet:  # fmt: skip
    """The mode's gate on the clips' windows (``birdsearch.model.novelty.fit_open_set``)."""
    outputs = np.concatenate(labelled.outputs)
    embeddings, tower = split_outputs(outputs, engine.embedder.facts.dim)
    confidences = platt(np.concatenate(labelled.per_windows))
    groups = np.repeat(labelled.groups, [len(o) for o in labelled.outputs])
    present = [p for clip in labelled.presents for p in clip]
    candidates = available_candidates(reference, prompt_signal(engine))
    gate = fit_open_set(Evidence(tower, embeddings, confidences), groups, present, candidates, keep, precision,
                        species_k)  # fmt: skip
    facts = {**gate.facts, "index": engine.served.name, "model": engine.embedder.facts.id,
             "reference_windows": len(reference.labels) if reference is not None else 0}  # fmt: skip
    log.info("open-set gate of %s: %s %s, novel above %.4g (validation AUROC %s), min_conf %s", engine.mode,
             gate.signal, gate.params, gate.threshold, gate.facts["validation_mean_auroc"].get(gate.facts["chosen"]),
             gate.min_conf)  # fmt: skip
    return OpenSet(gate.signal, gate.threshold, gate.params, gate.min_conf, facts)


def fit_mode(engine: Detector, clips: Sequence[Clip], rule: str = DEFAULT_SPECIES_RULE, candidates: int = 200,
             reference: Reference | None = None, keep: float = 0.95, precision: float = 0.7,
             species_k: int = 5) -> tuple[Platt, OpenSet]:  # fmt: skip
    """The mode's calibration and gate, both fitted on the same windows of ``clips``."""
    labelled = labelled_windows(engine, clips, rule, candidates)
    platt = fit_calibration(engine, labelled, rule, candidates)
    return platt, fit_gate(engine, labelled, platt, reference, keep, precision, species_k)


def build_mode_reference(engine: Detector, table: Path, folder: Path) -> Reference:
    """A reference for a model that has none: the training rows of ``table`` (path, species, [split, start,
    end]; rows of split ``train`` when it has a split), their windows' tower features, saved in ``folder``."""
    from birdsearch.model import audio
    from birdsearch.model.novelty import build_reference, save_reference, spread_order
    from birdsearch.model.tables import read_table

    rows = read_table(table, "reference recordings").to_dict("records")
    if not rows or not {"path", "species"} <= set(rows[0]):
        raise ConfigError(
            f"reference recordings {table}: needs a header with 'path' and 'species' and some rows"
        )
    if "split" in rows[0]:
        rows = [r for r in rows if r["split"] == "train"]
    species = sorted({str(r["species"]).strip() for r in rows})
    fe = engine.front_end

    def load(row: dict[str, Any]) -> Any:
        def windows() -> np.ndarray:
            samples = audio.load(table.parent / str(row["path"]), sample_rate=fe.sample_rate).samples
            start, end = (float(row[k]) if str(row.get(k) or "").strip() else None for k in ("start", "end"))
            if start is not None or end is not None:
                samples = samples[
                    round((start or 0) * fe.sample_rate) : None
                    if end is None
                    else round(end * fe.sample_rate)
                ]
            return audio.split(samples, fe.sample_rate, fe.window_s).samples

        return windows

    labels = [species.index(str(r["species"]).strip()) for r in rows]
    clips = [(labels[i], load(rows[i])) for i in spread_order(labels)]
    embed = lambda batch: split_outputs(engine.embedder(batch), engine.embedder.facts.dim)[1]  # noqa: E731
    facts = {"source": str(table), "split": "train", "space": "tower", "window_s": fe.window_s}
    reference = build_reference(embed, clips, species, facts)
    save_reference(reference, folder)
    log.info("novelty reference of %s: %d windows of %s, saved in %s", engine.mode, len(reference.labels), table,
             folder)  # fmt: skip
    return reference


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


def globbed(patterns: Sequence[str], option: str) -> list[str]:
    """The files the glob ``patterns`` match; ConfigError naming the option when some are given and none do."""
    import glob

    found = sorted({p for pattern in patterns for p in glob.glob(pattern, recursive=True)})
    if patterns and not found:
        raise ConfigError(f"{option} {list(patterns)}: no file matches")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Fit a mode's calibration and open-set gate on held-out clips, background-only recordings and
    recordings of what the gallery does not hold, and write them (calibration.json, open_set.json)."""
    import argparse

    from birdsearch.engine.confidence import calibration_place, mode_folder
    from birdsearch.engine.gate import open_set_place
    from birdsearch.model.calibration import save_calibration
    from birdsearch.model.hub import DEFAULT_STUDENT
    from birdsearch.model.novelty import load_reference, save_open_set

    parser = argparse.ArgumentParser(prog="python -m birdsearch.engine.calibrate", description=main.__doc__)
    parser.add_argument(
        "--index-root", type=Path, required=True, help="the published index the service searches"
    )
    parser.add_argument(
        "--checkpoint", default="", help="distilled encoder folder (modes distilled, classifier, hybrid)"
    )
    parser.add_argument(
        "--student", default=DEFAULT_STUDENT, help="the student (modes cascade, classifier, hybrid)"
    )
    parser.add_argument("--mode", choices=("auto", *MODES), default="auto")
    parser.add_argument(
        "--clips",
        type=Path,
        required=True,
        help="table (CSV, TSV, Parquet) path,species[,split]: held-out labelled clips",
    )
    parser.add_argument("--background", action="append", default=[],
                        help="glob of background-only recordings (no bird), repeatable")  # fmt: skip
    parser.add_argument("--outside", action="append", default=[], metavar="[GROUP=]GLOB",
                        help="glob of recordings of what the gallery does not hold (other birds, frogs, insects, rain, "
                        "engines, voices, other recorders), optionally named by group (non_bird=rain/*.flac); "
                        "negatives of the calibration and the windows the gate learns to call novel; repeatable")  # fmt: skip
    parser.add_argument("--reference", type=Path,
                        help="table path,species[,split,start,end] of the model's labelled training recordings: builds "
                        "the novelty reference of a model that has none (rows of split 'train' when it has a split)")  # fmt: skip
    parser.add_argument("--keep", type=float, default=0.95,
                        help="share of in-gallery clip windows the gate must not call novel (default: %(default)s)")  # fmt: skip
    parser.add_argument("--precision", type=float, default=0.7,
                        help="min_conf's default is the smallest threshold whose detections on these clips reach "
                        "this precision (default: %(default)s)")  # fmt: skip
    parser.add_argument("--species-k", type=int, default=5, help="species a window (default: %(default)s)")
    parser.add_argument("--species-rule", default=DEFAULT_SPECIES_RULE, help="the service's species rule")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path,
                        help=f"calibration file (default: {FILE_NAME} beside the encoder, or in the index root; "
                        "open_set.json goes beside it)")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        clips: list[Clip] = [
            *read_clips(args.clips),
            *[(p, None) for p in globbed(args.background, "--background")],
        ]
        for pattern in args.outside:
            group, _, glob_pattern = pattern.rpartition("=")
            clips += [(p, None, group or "outside") for p in globbed([glob_pattern], "--outside")]
        config = EngineConfig(index_root=args.index_root, checkpoint=args.checkpoint, student=args.student,
                              device=args.device)  # fmt: skip
        engine = Detector.load(config, args.mode, gate=False)
        folder = mode_folder(engine.mode, args.checkpoint, args.index_root)
        assert folder is not None  # Detector.load refused a distilled mode without an encoder
        reference = load_reference(folder)
        if reference is None and args.reference is not None:
            reference = build_mode_reference(engine, args.reference, folder)
        platt, gate = fit_mode(engine, clips, args.species_rule, config.candidates_per_window, reference,
                               args.keep, args.precision, args.species_k)  # fmt: skip
    except BirdsearchError as e:
        log.error("error: %s", e)
        return 2
    mode = engine.mode
    out = args.out or calibration_place(mode, "", args.checkpoint, args.index_root)
    assert out is not None
    log.info("calibration of %s written to %s", mode, save_calibration(out, mode, platt))
    gate_file = open_set_place(mode, str(out), args.checkpoint, args.index_root)
    assert gate_file is not None
    log.info("open-set gate of %s written to %s", mode, save_open_set(gate_file, mode, gate))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
