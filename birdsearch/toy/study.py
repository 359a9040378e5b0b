"""The toy-world study: every method against caption coverage, both students, several seeds, intervals.

``python -m birdsearch.toy.study`` (``--smoke`` for a seconds-to-minutes check) regenerates it:

1. **Students.** For each caption coverage (the share of species whose names the student's captions
   ever give), two students: ``realistic`` (its audio tower learned every species' label, only its
   text side is crippled; the world's default) and ``own-captions`` (realistic on both sides: the
   audio tower too learns only from the captions, missing and swapped names included).
2. **Selection on validation only.** On one student and coverage, seed 0, every distillation
   setting of the grid (objective × epochs × initial temperature) is distilled and scored on the
   distillation manifest's ``val`` rows (audio-to-image mAP against the gallery); the best setting
   is used everywhere, and so is the better snap variant (raw, snap-hard or snap-soft) on the same
   validation clips. The supervised controls choose their own learning rate and epochs on the
   same ``val`` rows (``birdsearch.model.evaluate.controls``). The test queries choose nothing.
3. **Cells.** For each student × coverage × training seed: distil with the chosen setting, distil
   the ablation without visual grounding (``--target student-text``) with the same setting, and
   evaluate every method on the held-out queries and the soundscapes (``birdsearch evaluate``).
4. **Intervals.** For each method and cell, the mean over seeds of query-averaged mAP,
   class-averaged mAP, nDCG@10 and soundscape cmAP, with a 95 % bootstrap interval over seeds and
   over queries resampled within species (segments within their recording)
   (``birdsearch.model.metrics.bootstrap_interval``).
5. **Report.** ``study.md`` (tables, the choices made and on what, and every comparison stated as
   "intervals do not overlap" or "intervals overlap"), ``study.json`` (every number), ``study.png``
   (mAP against caption coverage, one line per method, interval bands).

Every run is kept under ``--work``; a rerun reuses finished distillations and evaluations, so an
interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from birdsearch.errors import ConfigError
from birdsearch.toy.study_report import METRICS, markdown, plot

log = logging.getLogger(__name__)

STUDENTS = ("realistic", "own-captions")
# The comparisons the report states, each (method, opponent).
COMPARISONS = (
    ("distilled", "linear-head"),
    ("distilled+snap", "linear-cascade-hard"),
    ("distilled+snap", "linear-cascade-soft"),
    ("distilled", "cascade-soft"),
    ("distilled", "ablation"),
)


@dataclass
class StudyConfig:
    """What the study runs; the defaults are the full study."""

    preset: str = "small"  # toy world preset
    coverages: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    students: tuple[str, ...] = STUDENTS
    ablation: bool = True
    objectives: tuple[str, ...] = ("batch", "class")  # the selection grid
    epochs: tuple[int, ...] = (8, 15)
    temperatures: tuple[float, ...] = (0.07,)
    selection_student: str = "own-captions"
    selection_coverage: float = 0.5
    batch_size: int = 16  # the demo's toy settings (birdsearch.toy.cli.DEMO_DISTILL)
    lr: float = 1e-3
    resamples: int = 1000
    work: str | None = None  # runs and evaluations (default: the cache, per preset)
    out: str = "docs"  # study.md, study.json, study.png
    device: str = "cpu"
    finished_only: bool = False  # report the cells already finished; train and evaluate nothing

    def validate(self) -> None:
        unknown = [s for s in self.students if s not in STUDENTS]
        if unknown:
            raise ConfigError(f"unknown students {unknown}: use some of {', '.join(STUDENTS)}")
        bad = [c for c in self.coverages if not 0 < c <= 1]
        if bad or not self.coverages:
            raise ConfigError(f"caption coverages {list(self.coverages)} must be in (0, 1]")
        if not self.seeds:
            raise ConfigError("give at least one seed")
        if self.selection_student not in STUDENTS:
            raise ConfigError(
                f"unknown selection student {self.selection_student!r}: use one of {', '.join(STUDENTS)}"
            )


SMOKE = {
    "preset": "tiny", "coverages": (0.5,), "seeds": (0,), "objectives": ("class",), "epochs": (1,),
    "temperatures": (0.07,), "resamples": 50, "batch_size": 4,
}  # fmt: skip


# ---- students ---------------------------------------------------------------------------------------


def student_dir(world: Any, kind: str, coverage: float) -> Path:
    """Train (once) the ``kind`` student whose captions name ``coverage`` of the species; its folder."""
    from birdsearch.toy.student_model import OWN_CAPTIONS, train_student
    from birdsearch.toy.world import ToyWorld

    covered = ToyWorld(world.root, replace(world.config, caption_fraction=coverage))
    if kind == "realistic":
        directory = covered.student_dir_for("realistic")
        perfect = covered.student_dir_for("perfect")
        if not perfect.is_dir():  # the realistic student keeps the perfect one's audio tower
            shutil.copytree(world.perfect_student_dir, perfect)
    else:
        directory = world.root / "models" / f"student-{OWN_CAPTIONS}-{covered.config.model_key('student')}"
    if not (directory / "toy_captions.json").is_file():
        log.info("training the %s student at caption coverage %.2f", kind, coverage)
        tmp = directory.with_name(directory.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        train_student(covered, "realistic" if kind == "realistic" else OWN_CAPTIONS, False, tmp)
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)
    return directory


# ---- distillation and evaluation ----------------------------------------------------------------------


def distilled(
    cfg: StudyConfig, world: Any, student: Path, run: Path, setting: dict[str, Any], seed: int, target: str
) -> Path:
    """A distilled encoder (reused when the run finished before)."""
    from birdsearch.model.distill.trainer import DistillConfig, distill

    encoder = run / "encoder"
    if (encoder / "card.json").is_file():
        return encoder
    config = DistillConfig(
        manifest=str(world.distill_manifest), out=str(run), teacher=world.teacher_spec,
        student=f"local-dir:{student}", taxa=str(world.taxa_csv), target=target,
        objective=setting["objective"], epochs=setting["epochs"], init_temperature=setting["temperature"],
        batch_size=cfg.batch_size, lr=cfg.lr, seed=seed, device=cfg.device, workers=0, progress=False,
    )  # fmt: skip
    result = distill(config)
    assert result.encoder_dir is not None, "no stop_after: the run finished"
    return result.encoder_dir


def evaluated(
    cfg: StudyConfig,
    world: Any,
    student: Path,
    encoders: dict[str, Path],
    seed: int,
    split: str,
    path: Path,
    objective: str,
) -> dict[str, Any]:
    """``birdsearch evaluate`` of every method and these encoders (reused when done before).

    The linear-head control trains with ``objective``, the distillation's.
    """
    from birdsearch.model.evaluate.report import clean
    from birdsearch.model.evaluate.run import DEFAULT_METHODS, EvaluateConfig, evaluate

    if path.is_file():
        return json.loads(path.read_text())
    config = EvaluateConfig(
        dataset=f"toy:{cfg.preset}", teacher=world.teacher_spec, student=f"local-dir:{student}",
        encoders=[f"{name}={p}" for name, p in encoders.items()], split=split, seed=seed,
        methods=DEFAULT_METHODS if split == "test" else (), device=cfg.device, per_item=split == "test",
        control_objective=objective, plots=False,
    )  # fmt: skip
    result = clean(evaluate(config))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, default=str))
    return result


def setting_name(setting: dict[str, Any]) -> str:
    return f"{setting['objective']}-e{setting['epochs']}-t{setting['temperature']:g}"


def select_setting(cfg: StudyConfig, world: Any, work: Path) -> dict[str, Any]:
    """Distil every setting of the grid once (seed 0) and choose on the validation clips."""
    student = student_dir(world, cfg.selection_student, cfg.selection_coverage)
    grid = []
    for objective in cfg.objectives:
        for epochs in cfg.epochs:
            for temperature in cfg.temperatures:
                setting = {"objective": objective, "epochs": epochs, "temperature": temperature}
                where = work / "selection" / setting_name(setting)
                encoder = distilled(cfg, world, student, where / "run", setting, 0, "teacher")
                result = evaluated(
                    cfg, world, student, {"distilled": encoder}, 0, "val", where / "val.json", objective
                )
                methods = result["queries"]["methods"]
                scores = {name: methods[name]["retrieval"]["mAP"] for name in methods}
                grid.append({**setting, "val_mAP": scores, "val_queries": result["queries"]["queries"]})
    best = max(grid, key=lambda g: (g["val_mAP"]["distilled"], -g["epochs"]))
    snap = max(("distilled", "distilled+snap-hard", "distilled+snap-soft"), key=lambda m: best["val_mAP"][m])
    return {
        "setting": {k: best[k] for k in ("objective", "epochs", "temperature")},
        "snap": snap,
        "grid": grid,
        "on": f"the {best['val_queries']} validation clips of the distillation manifest (split 'val'), "
        f"{cfg.selection_student} student at caption coverage {cfg.selection_coverage}, seed 0; "
        "criterion: query-averaged audio-to-image mAP against the gallery",
    }


def cell_dir(work: Path, kind: str, coverage: float, seed: int, chosen: dict[str, Any]) -> Path:
    """Where one student × coverage × seed keeps its runs and its evaluation."""
    return work / "cells" / f"{kind}-c{coverage:g}-s{seed}-{setting_name(chosen['setting'])}"


def run_cell(
    cfg: StudyConfig, world: Any, work: Path, kind: str, coverage: float, seed: int, chosen: dict[str, Any]
) -> dict[str, Any]:
    """One student × coverage × seed: distil (and the ablation), evaluate every method on the test split."""
    student = student_dir(world, kind, coverage)
    setting = chosen["setting"]
    cell = cell_dir(work, kind, coverage, seed, chosen)
    encoders = {"distilled": distilled(cfg, world, student, cell / "distilled", setting, seed, "teacher")}
    if cfg.ablation:
        encoders["ablation"] = distilled(
            cfg, world, student, cell / "ablation", setting, seed, "student-text"
        )
    result = evaluated(cfg, world, student, encoders, seed, "test", cell / "test.json", setting["objective"])
    return rename_selected(result, chosen["snap"])


def rename_selected(result: dict[str, Any], snap: str) -> dict[str, Any]:
    """The snap variant chosen on validation becomes ``distilled+snap``; the ablation's snaps are dropped."""
    for section in ("queries", "soundscapes"):
        methods = result[section]["methods"]
        kept = {n: m for n, m in methods.items() if not n.startswith("ablation+")}
        kept["distilled+snap"] = methods[snap]
        result[section]["methods"] = kept
    return result


# ---- intervals and the report -------------------------------------------------------------------------


def intervals(cells: list[dict[str, Any]], resamples: int) -> dict[str, dict[str, list[float]]]:
    """{method: {metric: [mean, low, high]}} over the seeds' results of one student × coverage."""
    import numpy as np

    from birdsearch.model import metrics

    queries = [c["queries"] for c in cells]
    labels = np.array(queries[0]["labels"])
    sound = [c["soundscapes"] for c in cells]
    positives = np.array(sound[0]["labels"], dtype=bool)
    recordings = np.unique(np.array(sound[0]["recordings"]), return_inverse=True)[1]
    out: dict[str, dict[str, list[float]]] = {}
    for method in queries[0]["methods"]:
        ap = np.array(
            [[np.nan if v is None else v for v in q["methods"][method]["per_query"]["AP"]] for q in queries]
        )
        ndcg = np.array([[np.nan if v is None else v for v in q["methods"][method]["per_query"]["nDCG@10"]] for q in queries])  # fmt: skip
        scores = np.array([s["methods"][method]["scores"] for s in sound])
        runs = len(cells)
        stats = {
            "mAP": (metrics.query_mean(ap), labels),
            "class mAP": (metrics.class_mean(ap, labels), labels),
            "nDCG@10": (metrics.query_mean(ndcg), labels),
            "soundscape cmAP": (metrics.cmap_of(scores, positives), recordings),
        }
        out[method] = {
            name: list(metrics.bootstrap_interval(statistic, runs, strata, resamples, seed=0))
            for name, (statistic, strata) in stats.items()
        }
    return out


def cached_intervals(
    cfg: StudyConfig,
    work: Path,
    kind: str,
    coverage: float,
    chosen: dict[str, Any],
    cells: list[dict[str, Any]],
) -> dict[str, dict[str, list[float]]]:
    """``intervals`` of one student × coverage, kept beside its runs (the bootstrap is the slow part of a report)."""
    seeds = "-".join(map(str, cfg.seeds))
    name = f"{kind}-c{coverage:g}-s{seeds}-{setting_name(chosen['setting'])}-{chosen['snap']}-r{cfg.resamples}.json"
    path = work / "intervals" / name
    if path.is_file():
        return json.loads(path.read_text())
    result = intervals(cells, cfg.resamples)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)
    return result


def compare(a: list[float], b: list[float]) -> str:
    """How two [mean, low, high] intervals relate, in the words the report uses."""
    if a[1] > b[2]:
        return "higher (intervals do not overlap)"
    if a[2] < b[1]:
        return "lower (intervals do not overlap)"
    return "intervals overlap"


def run_study(cfg: StudyConfig) -> dict[str, Any]:
    """Run (or continue) the whole study and write its report; returns the report's data."""
    from birdsearch.paths import cache_root
    from birdsearch.toy.training import torch_threads, training_threads
    from birdsearch.toy.world import ensure_world

    cfg.validate()
    started = time.time()
    world = ensure_world(cfg.preset, progress=False)
    if not world.student_manifest.is_file():  # models installed, not trained: the study trains students
        world = ensure_world(cfg.preset, stages=("student-audio",), progress=False)
    work = Path(cfg.work) if cfg.work else cache_root() / "study" / cfg.preset
    if cfg.finished_only and not (work / "selection").is_dir():
        raise ConfigError(f"{work}: no study has run there yet; run it without --finished-only first")
    with torch_threads(training_threads()):
        chosen = select_setting(cfg, world, work)
        log.info("chosen on validation: %s, %s", chosen["setting"], chosen["snap"])
        table: dict[str, dict[str, Any]] = {kind: {} for kind in cfg.students}
        total = len(cfg.students) * len(cfg.coverages)
        data = report_data(cfg, world, chosen, table, started, 0, total)
        # both students at a coverage before the next coverage: a partial study still compares them
        for coverage in cfg.coverages:
            for kind in cfg.students:
                if cfg.finished_only and not all(
                    (cell_dir(work, kind, coverage, s, chosen) / "test.json").is_file() for s in cfg.seeds
                ):
                    continue
                cells = [run_cell(cfg, world, work, kind, coverage, s, chosen) for s in cfg.seeds]
                table[kind][f"{coverage:g}"] = cached_intervals(cfg, work, kind, coverage, chosen, cells)
                done = sum(len(v) for v in table.values())
                data = report_data(cfg, world, chosen, table, started, done, total)
                write_report(data, Path(cfg.out))  # after every cell: an interrupted study has a report
    return data


def report_data(
    cfg: StudyConfig,
    world: Any,
    chosen: dict[str, Any],
    table: dict[str, dict[str, Any]],
    started: float,
    done: int,
    total: int,
) -> dict[str, Any]:
    """What study.json holds (and study.md shows); ``done`` of ``total`` student × coverage cells so far."""
    return {
        "config": asdict(cfg),
        "world": {"preset": cfg.preset, "species": world.config.n_species, "root": world.root.name},
        "selection": chosen,
        "results": {kind: by_coverage for kind, by_coverage in table.items() if by_coverage},
        "comparisons": comparisons(table),
        "cells": {"done": done, "total": total},
        "minutes": round((time.time() - started) / 60, 1),
    }


def comparisons(table: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for kind, by_coverage in table.items():
        for coverage, methods in by_coverage.items():
            for a, b in COMPARISONS:
                if a in methods and b in methods:
                    for metric in METRICS:
                        verdict = compare(methods[a][metric], methods[b][metric])
                        out.append({"student": kind, "coverage": coverage, "method": a, "opponent": b,
                                    "metric": metric, "verdict": verdict})  # fmt: skip
    return out


def write_report(data: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "study.md", "json": out / "study.json", "plot": out / "study.png"}
    paths["json"].write_text(json.dumps(data, indent=1, default=str) + "\n")
    plot(data, paths["plot"])
    paths["markdown"].write_text(markdown(data, paths["plot"].name))
    return paths


# ---- command line ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> StudyConfig:
    parser = argparse.ArgumentParser(
        prog="python -m birdsearch.toy.study", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--preset", default="small", help="toy world preset (default: %(default)s)")
    parser.add_argument("--coverages", default="0.25,0.5,0.75,1.0", help="caption coverages")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds per cell")
    parser.add_argument("--students", default=",".join(STUDENTS))
    parser.add_argument(
        "--no-ablation", action="store_true", help="skip the ablation without visual grounding"
    )
    parser.add_argument("--objectives", default="batch,class", help="selection grid: objectives")
    parser.add_argument("--epochs", default="8,15", help="selection grid: epochs")
    parser.add_argument("--temperatures", default="0.07", help="selection grid: initial temperatures")
    parser.add_argument("--selection-coverage", type=float, default=0.5,
                        help="caption coverage of the student the settings are chosen with (default: %(default)s)")  # fmt: skip
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--work", help="where runs are kept (default: the cache)")
    parser.add_argument("--out", default="docs", help="folder for study.md, study.json, study.png")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--finished-only", action="store_true",
                        help="write the report from the cells already finished (e.g. by runs in parallel); train nothing")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="the tiny world, one cell: checks the wiring")
    args = parser.parse_args(argv)

    def floats(text: str) -> tuple[float, ...]:
        return tuple(float(x) for x in text.split(",") if x.strip())

    def ints(text: str) -> tuple[int, ...]:
        return tuple(int(x) for x in text.split(",") if x.strip())

    cfg = StudyConfig(
        preset=args.preset, coverages=floats(args.coverages), seeds=ints(args.seeds),
        students=tuple(s.strip() for s in args.students.split(",") if s.strip()), ablation=not args.no_ablation,
        objectives=tuple(args.objectives.split(",")), epochs=ints(args.epochs), temperatures=floats(args.temperatures),
        selection_coverage=args.selection_coverage, resamples=args.resamples, work=args.work,
        finished_only=args.finished_only, out=args.out, device=args.device,
    )  # fmt: skip
    if args.smoke:
        cfg = replace(cfg, **SMOKE, selection_coverage=SMOKE["coverages"][0])
    return cfg


def main(argv: list[str] | None = None) -> int:
    from birdsearch.toy import plugin

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    plugin.register()
    cfg = parse_args(argv)
    data = run_study(cfg)
    if not data["cells"]["done"]:
        log.warning("no student × coverage cell has finished all its seeds yet: no report written")
        return 1
    log.info("study written to %s (%d of %d cells)", cfg.out, data["cells"]["done"], data["cells"]["total"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
