"""Open set on the toy world: does the model say "not in this gallery" to what it never learned?

On the toy world's open parts (``birdsearch.toy.openset``: out-of-gallery birds, non-bird sounds,
a shifted recorder), per query mode (distilled, classifier, cascade; ``--modes``):

1. **Validation** (``val`` kinds, the distillation's validation recordings, background-only
   recordings of subset "fit": the clips the demo fits on, in its order):
   - the confidence calibration fit twice: as before (in-gallery clips + background) and with the
     outside validation windows (out-of-gallery, non-bird, shifted recorder) as negatives too;
   - the gate, fitted as the demo and ``calibrate`` fit it (``birdsearch.model.novelty.fit_open_set``):
     every candidate signal scored by AUROC, in-gallery windows against each outside group's, the
     best mean chosen, its threshold set so that ``--keep`` of in-gallery validation windows are not
     novel, and ``min_conf`` the smallest threshold whose detections reach ``--precision``. The table
     adds the reference signals measured in the mode's final embedding instead of the tower's
     (``output`` rows: not candidates, shown to compare), and paired bootstrap intervals of each
     signal's mean AUROC against the chosen one's (recordings resampled within each group).
2. **Test** (``test`` kinds, the query recordings, background of subset "test", the world's
   soundscapes and ``--soundscapes`` more of subset "test"), before and after: AUROC of in-gallery
   windows against out-of-gallery, non-bird and shifted-recorder windows; false detections per hour
   on out-of-gallery, non-bird and background-only audio; precision and recall on in-gallery
   soundscape windows. Before = the calibration as the demo fit it (in-gallery + background) at
   ``min_conf`` 0.1 (the old default), the best calibrated confidence as the only novelty signal;
   after = the new calibration, the chosen gate and the chosen ``min_conf``.

A detection is one of a window's ``--species-k`` best species with a confidence at least the
threshold, in a window the gate lets through; it is right when that species calls in the window.
Everything per window is computed once and cached under ``--work``.

    python bench/open_set.py --json bench/results/open_set_default.json      # default preset
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("open_set")
MODES = ("distilled", "classifier", "cascade")  # the demo encoder's default (classifier) among them
OUTSIDE = ("out_of_gallery", "non_bird", "shifted")
FIT_GROUPS = ("in_gallery", "background", *OUTSIDE)
# the validation recordings (what the gate is fitted on)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="default", help="toy world preset (default: default)")
    parser.add_argument(
        "--modes", default=",".join(MODES), help="query modes to measure (default: %(default)s)"
    )
    parser.add_argument(
        "--keep", type=float, default=0.95, help="share of in-gallery validation windows not novel"
    )
    parser.add_argument(
        "--precision", type=float, default=0.7, help="validation precision min_conf is chosen for"
    )
    parser.add_argument("--before-min-conf", type=float, default=0.1, help="the min_conf default before")
    parser.add_argument(
        "--species-k", type=int, default=5, help="species per window at most (analyze's default)"
    )
    parser.add_argument("--soundscapes", type=int, default=10, help="extra test soundscapes")
    parser.add_argument(
        "--background-fit", type=int, default=8, help="30 s background-only recordings, validation"
    )
    parser.add_argument(
        "--background-test", type=int, default=20, help="60 s background-only recordings, test"
    )
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--work", type=Path, help="cache folder (default: <world>/bench-open-set)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    return parser.parse_args()


# -- what each recording's windows are ---------------------------------------------------------------


@dataclass
class Item:
    """One recording and the truth of its windows."""

    path: str
    group: str  # in_gallery, soundscape, background, out_of_gallery, non_bird, shifted
    kind: str = ""
    species: str = ""  # the one gallery species calling throughout (in-gallery clips)
    bouts: list[tuple[float, float, str]] = field(default_factory=list)  # soundscapes

    def present(self, starts: np.ndarray, window_s: float, rows: dict[str, int]) -> list[set[int]]:
        """The gallery species rows calling in each window."""
        if self.group == "soundscape":
            return [{rows[s] for a, b, s in self.bouts if a < t + window_s and b > t} for t in starts]
        if self.species:
            return [{rows[self.species]}] * len(starts)
        return [set() for _ in starts]


def datasets(world: Any, work: Path, args: argparse.Namespace) -> dict[str, list[Item]]:
    """The validation recordings (the demo's calibration clips, in its order) and the test recordings."""
    from birdsearch.toy.background import background_only, calibration_clips, extra_soundscapes, outside_clips

    own: dict[str, list[tuple[float, float, str]]] = {}
    with open(world.soundscape_annotations, newline="") as f:
        for r in csv.DictReader(f):
            own.setdefault(r["file"], []).append((float(r["start_s"]), float(r["end_s"]), r["species"]))
    audio = work / "audio"
    val = [Item(str(p), "in_gallery" if s else "background", species=s or "")
           for p, s in calibration_clips(world, audio, args.background_fit)]  # fmt: skip
    val += [
        Item(p, group) for p, group in outside_clips(world)
    ]  # no species: negatives, as the demo fits them
    test = [
        Item(r["path"], "in_gallery", species=r["species"]) for r in world.read_manifest(world.query_manifest)
    ]
    test += [
        Item(str(p), "background") for p in background_only(world, audio, args.background_test, 60.0, "test")
    ]
    test += [Item(p, "soundscape", bouts=b) for p, b in own.items()]
    test += [
        Item(str(p), "soundscape", bouts=b)
        for p, b in extra_soundscapes(world, audio, args.soundscapes, "test")
    ]
    test += [Item(r["path"], r["group"], r["kind"]) for r in world.read_manifest(world.open_manifest("test"))]
    return {"val": val, "test": test}


# -- per-window outputs of a mode (cached) -------------------------------------------------------------


@dataclass
class Windows:
    """Every window of a list of recordings, concatenated, with what the truth and the mode say."""

    outputs: np.ndarray  # (W, dim + tower) the model's outputs: embeddings, then tower features
    scores: np.ndarray  # (W, S) pooled species scores
    present: list[set[int]]  # gallery species rows calling in each window
    group: np.ndarray  # (W,) the recording's group
    per_recording: list[slice]  # each recording's rows

    def split(self, engine: Any) -> tuple[np.ndarray, np.ndarray]:
        """(the mode's embeddings, the tower's features)."""
        from birdsearch.engine.embedders import split_outputs

        return split_outputs(self.outputs, engine.embedder.facts.dim)

    def labelled(self, groups: tuple[str, ...]) -> Any:
        """The recordings of ``groups`` as the engine's calibration fit takes them."""
        from birdsearch.engine.calibrate import Labelled

        chosen = [part for part in self.per_recording if self.group[part.start] in groups]
        return Labelled([self.scores[p] for p in chosen], [self.present[p] for p in chosen],
                        [str(self.group[p.start]) for p in chosen], [self.outputs[p] for p in chosen])  # fmt: skip


def collect(engine: Any, items: list[Item], rule: str, cache: Path) -> Windows:
    """Every window of ``items``, cut and scored as ``analyze`` does; each recording cached in ``cache``."""
    import hashlib

    from birdsearch.engine.calibrate import model_outputs

    cache.mkdir(parents=True, exist_ok=True)
    rows = engine.served.species_row
    parts = []
    for item in items:
        name = cache / (hashlib.sha256(item.path.encode()).hexdigest()[:16] + ".npz")
        if not name.is_file():
            outputs, starts = model_outputs(engine, item.path)
            scores = engine.score(outputs, 200, rule).species.per_window
            np.savez(name, outputs=outputs, scores=scores, starts=starts)
        with np.load(name) as f:
            part = {k: f[k] for k in f.files}
        part["present"] = item.present(part["starts"], engine.front_end.window_s, rows)
        parts.append(part)
    sizes = np.array([len(p["starts"]) for p in parts])
    ends = np.cumsum(sizes)
    return Windows(
        np.concatenate([p["outputs"] for p in parts]), np.concatenate([p["scores"] for p in parts]),
        [s for p in parts for s in p["present"]], np.repeat([i.group for i in items], sizes),
        [slice(e - n, e) for n, e in zip(sizes, ends, strict=True)],
    )  # fmt: skip


def reference_for(engine: Any, world: Any, cache: Path, space: str) -> Any:
    """The mode's reference in ``space`` ("tower", as the demo builds it; or "output": the mode's own
    embeddings of the same training windows, to compare), cached."""
    from birdsearch.engine.calibrate import build_mode_reference
    from birdsearch.engine.embedders import split_outputs
    from birdsearch.model import audio
    from birdsearch.model.novelty import build_reference, load_reference, save_reference, spread_order

    folder = cache / space
    if (folder / "novelty_reference.json").is_file():
        return load_reference(folder)
    if space == "tower":
        build_mode_reference(engine, world.distill_manifest, folder)
        return load_reference(folder)  # as served: read back from its files, so a rerun measures the same
    fe = engine.front_end
    rows = [r for r in world.read_manifest(world.distill_manifest) if r["split"] == "train"]
    species = sorted({r["species"] for r in rows})

    def clip(r: dict[str, str]) -> Any:
        def load() -> np.ndarray:
            samples = audio.load(r["path"], sample_rate=fe.sample_rate).samples
            if r["start"]:
                samples = samples[
                    int(float(r["start"]) * fe.sample_rate) : int(float(r["end"]) * fe.sample_rate)
                ]
            return audio.split(samples, fe.sample_rate, fe.window_s).samples

        return load

    labels = [species.index(r["species"]) for r in rows]
    embed = lambda batch: split_outputs(engine.embedder(batch), engine.embedder.facts.dim)[0]  # noqa: E731
    reference = build_reference(embed, [(labels[i], clip(rows[i])) for i in spread_order(labels)], species,
                                {"source": str(world.distill_manifest), "space": "output"})  # fmt: skip
    save_reference(reference, folder)
    return load_reference(folder)


# -- calibration, signals, the gate -----------------------------------------------------------------


def evidence(engine: Any, w: Windows, confidences: np.ndarray | None) -> Any:
    from birdsearch.model.novelty import Evidence

    embeddings, tower = w.split(engine)
    return Evidence(tower=tower, embeddings=embeddings, confidences=confidences)


def paired_intervals(values: dict[str, np.ndarray], w: Windows, best: str, resamples: int) -> dict[str, Any]:
    """95 % bootstrap intervals of (best's mean AUROC - each other's), recordings resampled within groups."""
    from birdsearch.model.novelty import auroc_by_group

    rng = np.random.default_rng(0)
    by_group = [
        [p for p in w.per_recording if w.group[p.start] == g] for g in dict.fromkeys(w.group.tolist())
    ]
    out: dict[str, list[float]] = {name: [] for name in values if name != best}
    for _ in range(resamples):
        drawn = [g[i] for g in by_group for i in rng.integers(0, len(g), len(g))]
        rows = np.concatenate([np.arange(p.start, p.stop) for p in drawn])
        mean = {
            n: float(np.mean(list(auroc_by_group(v[rows], w.group[rows]).values())))
            for n, v in values.items()
        }
        for name in out:
            out[name].append(mean[best] - mean[name])
    return {name: [round(float(q), 4) for q in np.quantile(d, [0.025, 0.975])] for name, d in out.items()}


def operating_figures(confidence: np.ndarray, novel: np.ndarray, w: Windows, k: int, threshold: float,
                      window_s: float) -> dict[str, Any]:  # fmt: skip
    """False detections per hour per group, precision and recall on soundscape and query windows."""
    top = np.argsort(-confidence, axis=1, kind="stable")[:, :k]
    found = [set() if novel[i] else {int(r) for r in top[i] if confidence[i, r] >= threshold}
             for i in range(len(confidence))]  # fmt: skip
    out: dict[str, Any] = {}
    for group in ("out_of_gallery", "non_bird", "background"):
        rows = np.flatnonzero(w.group == group)
        out[f"false_per_hour_{group}"] = sum(len(found[i]) for i in rows) / (len(rows) * window_s / 3600)
    for group, name in (("soundscape", "soundscape"), ("in_gallery", "query")):
        rows = np.flatnonzero(w.group == group)
        tp = sum(len(found[i] & w.present[i]) for i in rows)
        fp = sum(len(found[i] - w.present[i]) for i in rows)
        fn = sum(len(w.present[i] - found[i]) for i in rows)
        out[f"{name}_precision"] = tp / (tp + fp) if tp + fp else None
        out[f"{name}_recall"] = tp / (tp + fn) if tp + fn else None
    present = [g for g in ("in_gallery", "soundscape", "background", *OUTSIDE) if (w.group == g).any()]
    out["windows_novel"] = {g: float(novel[w.group == g].mean()) for g in present if g != "background"}
    # Share of each group's windows that give any detection, and how high the raw photo score of a
    # window's best species runs there (a mode whose scores do not fall without a bird cannot abstain).
    out["windows_detected"] = {g: float(np.mean([bool(found[i]) for i in np.flatnonzero(w.group == g)]))
                               for g in present}  # fmt: skip
    out["best_score_median"] = {g: float(np.median(w.scores[w.group == g].max(axis=1))) for g in present}
    return out


# -- one mode --------------------------------------------------------------------------------------------


def evaluate_mode(engine: Any, world: Any, data: dict[str, list[Item]], work: Path, args: argparse.Namespace,
                  rule: str) -> dict[str, Any]:  # fmt: skip
    from birdsearch.engine.calibrate import fit_calibration, fit_gate, prompt_signal
    from birdsearch.model.novelty import (
        Evidence,
        KnnNovelty,
        MahalanobisNovelty,
        auroc_by_group,
        available_candidates,
    )

    mode = engine.mode
    val = collect(engine, data["val"], rule, work / "windows" / mode)
    test = collect(engine, data["test"], rule, work / "windows" / mode)
    reference = reference_for(engine, world, work / "reference" / mode, "tower")
    window_s = engine.front_end.window_s
    # As the demo fits them: the calibration with the outside as negatives, then the gate on the same windows.
    before = fit_calibration(engine, val.labelled(("in_gallery", "background")), rule, 200)
    after = fit_calibration(engine, val.labelled(FIT_GROUPS), rule, 200)
    gate = fit_gate(
        engine, val.labelled(FIT_GROUPS), after, reference, args.keep, args.precision, args.species_k
    )
    # Every candidate's validation AUROC, and to compare, the reference signals in the mode's own embedding.
    val_conf, test_conf = after(val.scores), after(test.scores)
    output = reference_for(engine, world, work / "reference" / mode, "output")
    compared = {"output knn:5": KnnNovelty(output, 5), "output knn:20": KnnNovelty(output, 20),
                "output mahalanobis": MahalanobisNovelty(output)}  # fmt: skip
    candidates = available_candidates(reference, prompt_signal(engine))
    values = {name: signal(evidence(engine, val, val_conf)) for name, signal in candidates.items()}
    values |= {
        name: signal(Evidence(tower=val.split(engine)[0])) for name, signal in compared.items()
    }  # embeddings
    val_auroc = {name: auroc_by_group(v, val.group) for name, v in values.items()}
    intervals = paired_intervals(values, val, gate.facts["chosen"], args.resamples)
    # Test: before (the old calibration at the old default, no gate) and after (the new one, gate, min_conf).
    novelty = candidates[gate.facts["chosen"]](evidence(engine, test, test_conf))  # the chosen signal
    novel = gate.novel(novelty)
    min_conf = 1.0 if gate.min_conf is None else gate.min_conf
    nothing = np.zeros(len(novel), bool)
    before_conf = before(test.scores)
    val_novel = gate.novel(values[gate.facts["chosen"]])
    return {
        "validation": {"auroc": val_auroc, "paired_95": intervals, "gate": {
            "signal": gate.signal, "params": gate.params, "threshold": gate.threshold, "min_conf": gate.min_conf,
            **gate.facts},
            "after": operating_figures(val_conf, val_novel, val, args.species_k, min_conf, window_s)},
        "calibration": {"before": describe_fit(before), "after": describe_fit(after)},
        "test": {
            "before": {"auroc": auroc_by_group(1 - before_conf.max(axis=1), test.group),
                       **operating_figures(before_conf, nothing, test, args.species_k, args.before_min_conf, window_s)},
            "after": {"auroc": auroc_by_group(novelty, test.group),
                      **operating_figures(test_conf, novel, test, args.species_k, min_conf, window_s)},
            "after_without_gate": operating_figures(test_conf, nothing, test, args.species_k, min_conf, window_s),
            "windows": count_groups(test),
        },
        "reference_windows": len(reference.labels),
    }  # fmt: skip


def count_groups(w: Windows) -> dict[str, int]:
    return {str(g): int((w.group == g).sum()) for g in np.unique(w.group)}


def describe_fit(platt: Any) -> dict[str, Any]:
    from birdsearch.model.calibration import describe

    return {**describe(platt), **platt.facts}


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from birdsearch.engine.config import EngineConfig
    from birdsearch.engine.detector import Detector
    from birdsearch.engine.ranking import DEFAULT_SPECIES_RULE
    from birdsearch.toy import plugin
    from birdsearch.toy.cli import build_index, distil
    from birdsearch.toy.world import ensure_world

    plugin.register()
    started = time.perf_counter()
    world = ensure_world(args.preset, stages=("metrics", "open-val", "open-test"), progress=False)
    work = args.work or world.root / "bench-open-set"
    built = argparse.Namespace(rebuild=False, device="cpu")
    encoder = distil(world, world.student_spec, world.root / "demo" / "encoder-realistic", built)
    index_root = build_index(world, world.root / "demo" / "index", built)
    data = datasets(world, work, args)
    results = {}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        config = EngineConfig(index_root=index_root, checkpoint=str(encoder), student=world.student_spec,
                              device="cpu")  # fmt: skip
        engine = Detector.load(config, mode, gate=False)  # the gate is what this fits
        results[mode] = evaluate_mode(engine, world, data, work, args, DEFAULT_SPECIES_RULE)
        log.info("%s: %s", mode, json.dumps(results[mode], default=str))
    report = {
        "preset": args.preset, "species_rule": DEFAULT_SPECIES_RULE, "species_k": args.species_k,
        "keep": args.keep, "precision": args.precision, "before_min_conf": args.before_min_conf,
        "recordings": {split: {g: sum(i.group == g for i in items) for g in dict.fromkeys(i.group for i in items)}
                       for split, items in data.items()},
        "modes": results, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "wall_s": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    print_tables(report)
    return 0


def print_tables(report: dict[str, Any]) -> None:
    """The BENCHMARKS.md tables (stdout is this script's product)."""
    lines = ["| mode | signal | out-of-gallery | non-bird | shifted recorder | mean | chosen minus it (95 %) |",
             "|---|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for mode, r in report["modes"].items():
        v = r["validation"]
        chosen = v["gate"]["chosen"]
        for name, a in v["auroc"].items():
            mean = np.mean(list(a.values()))
            low_high = "chosen" if name == chosen else "{:+.3f} to {:+.3f}".format(*v["paired_95"][name])
            lines.append(f"| {mode} | {name} | {a['out_of_gallery']:.3f} | {a['non_bird']:.3f} | "
                         f"{a['shifted']:.3f} | {mean:.3f} | {low_high} |")  # fmt: skip
    lines += ["", "| mode | | min_conf | AUROC out-of-gallery | AUROC non-bird | AUROC shifted | "
              "false/h out-of-gallery | false/h non-bird | false/h background | soundscape precision | "
              "soundscape recall |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for mode, r in report["modes"].items():
        for when in ("before", "after"):
            t = r["test"][when]
            threshold = report["before_min_conf"] if when == "before" else r["validation"]["gate"]["min_conf"]
            lines.append(
                f"| {mode} | {when} | {number(threshold, '.2f')} | {number(t['auroc']['out_of_gallery'], '.3f')} | "
                f"{number(t['auroc']['non_bird'], '.3f')} | {number(t['auroc']['shifted'], '.3f')} | "
                f"{t['false_per_hour_out_of_gallery']:.0f} | {t['false_per_hour_non_bird']:.0f} | "
                f"{t['false_per_hour_background']:.0f} | {number(t['soundscape_precision'], '.2f')} | "
                f"{number(t['soundscape_recall'], '.2f')} |"
            )
    print("\n".join(lines))


def number(value: float | None, spec: str) -> str:
    """A table cell: ``value`` formatted, or a dash where there is none (no threshold reached the
    precision target; no soundscape detection)."""
    return "—" if value is None else format(value, spec)


if __name__ == "__main__":
    raise SystemExit(main())
