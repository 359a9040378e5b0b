"""The toy-world study: distillation against the controls, on species with and without labelled audio.

``python -m birdsearch.toy.study`` (``--smoke`` for a minutes-long check on the tiny world) regenerates
``docs/study.md``, ``study.json`` and ``study.png``:

1. **Species without labelled audio.** One species of each of ``--unseen-genera`` genera (default 6
   of the default world's 12) is dropped from the labelled recordings, training and validation
   rows alike; it stays in the gallery and among the test queries. That is the situation aiming at
   the teacher's text space promises to handle: a species known by its photos and its name only.
   The dropped species are drawn so that about half of them are named by the students' captions
   and half are not, so the results cross "labelled audio" with "the captions name it".
2. **Students.** ``realistic`` (its audio tower learned every species' label, only its text side
   is crippled) and ``own-captions`` (realistic on both sides: its audio tower too learned only
   from the captions), at each caption coverage (default: the world's 0.5).
3. **Distillation's settings, on validation.** Distillation into the teacher's text space and the
   ``linear-*`` controls get a search of the same size: three learning rates × an epoch count every
   5 epochs up to 60 (``birdsearch.model.evaluate.controls``). Distillation runs each learning rate
   once for 60 epochs on the schedule of 60 epochs (seed 0, ``own-captions`` student) and chooses
   the (learning rate, epochs) with the best class-wise mAP on the validation clips, which every
   later run then trains (``DistillConfig.schedule_epochs``); the controls choose the same way on
   the same clips, in every run. Training only ever contrasts the species that have labelled audio.
4. **How to answer for species without labelled audio, on validation.** The hybrids give a species
   without labelled audio a zero-shot score (``birdsearch.model.query.HybridQuery``): the student's
   captions for the linear cascade (the controls' honest best), the distilled encoder against the
   teacher's text for ``hybrid``. Their offset (and hard or soft, and which snap variant is
   ``distilled+snap``) are chosen on a second split of the labelled species only: one species of
   each of as many other genera is held out too, distillation and the controls train on the rest,
   and every labelled species' validation clips query the gallery (audio-to-image mAP).
5. **Cells.** For each student × coverage × seed (5 seeds): distil with the chosen setting (with
   ``--ablation``, also the ablation without visual grounding, ``--target student-text``), and
   evaluate every method on the test queries and the soundscapes (``birdsearch evaluate``).
6. **Intervals.** Mean over seeds with a 95 % bootstrap interval (seeds drawn with replacement,
   queries within their species), per group of species (with or without labelled audio, named by
   the captions or not), for species-level mAP, genus-level mAP and nDCG@10; for each comparison the
   report makes, a **paired** interval of the difference (the same resamples for both methods,
   ``metrics.difference``). Soundscape cmAP is given as a mean only: the world has fewer than 10
   soundscape recordings, too few for an interval to mean anything.

Every run is kept under ``--work``; a rerun reuses finished distillations and evaluations, so an
interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from birdsearch.errors import ConfigError
from birdsearch.toy.study_report import markdown, plot

log = logging.getLogger(__name__)

STUDENTS = ("realistic", "own-captions")
CLOSED = float("-inf")  # the offset that never answers a species without labelled audio
# How each of the report's methods is picked out of an evaluation: fixed, or chosen on validation.
CHOSEN = ("distilled+snap", "linear-cascade-hard", "linear-cascade-soft", "hybrid")
# The comparisons the report states, each (method, opponent): a paired interval of the difference.
COMPARISONS = (
    ("distilled", "linear-head"),
    ("distilled", "linear-cascade-hard"),
    ("distilled", "linear-cascade-soft"),
    ("distilled", "cascade-hard"),
    ("distilled", "cascade-soft"),
    ("distilled+snap", "linear-cascade-hard"),
    ("distilled+snap", "linear-cascade-soft"),
    ("hybrid", "distilled"),
    ("hybrid", "distilled+snap"),
    ("hybrid", "linear-head"),
    ("hybrid", "linear-cascade-hard"),
    ("hybrid", "linear-cascade-soft"),
    ("distilled", "ablation"),
)
METRICS = {"mAP": "AP", "genus mAP": "AP genus", "nDCG@10": "nDCG@10"}  # report name: per-query key
GROUPS = ("all", "with audio", "without audio", "without audio, named", "without audio, not named",
          "with audio, named", "with audio, not named")  # fmt: skip
MIN_SOUNDSCAPE_RECORDINGS = 10  # fewer: no soundscape interval


@dataclass
class StudyConfig:
    """What the study runs; the defaults are the full study."""

    preset: str = "default"  # toy world preset
    coverages: tuple[float, ...] = (0.5,)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    students: tuple[str, ...] = STUDENTS
    ablation: bool = False  # also the ablation without visual grounding (one more distillation per cell)
    unseen_genera: int = 6  # one species without labelled audio in each of this many genera
    lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)  # distillation's learning rates
    max_epochs: int = 60  # distillation's epochs: candidates every check_every up to this
    check_every: int = 5
    objective: str = "class"
    temperature: float = 0.07
    offsets: tuple[float, ...] = (CLOSED, -8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0)  # hybrids' zero-shot offsets
    selection_student: str = "own-captions"
    selection_coverage: float = 0.5
    batch_size: int = 16  # the demo's toy settings (birdsearch.toy.cli.DEMO_DISTILL)
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
        if not self.candidate_epochs():
            raise ConfigError(
                f"no epoch candidate: --max-epochs {self.max_epochs} < --check-every {self.check_every}"
            )

    def candidate_epochs(self) -> list[int]:
        return list(range(self.check_every, self.max_epochs + 1, self.check_every))


SMOKE = {
    "preset": "tiny", "seeds": (0, 1), "unseen_genera": 1, "lrs": (1e-3, 3e-3), "max_epochs": 2,
    "check_every": 1, "offsets": (CLOSED, 0.0), "resamples": 50, "batch_size": 4, "ablation": False,
}  # fmt: skip


# ---- which species have labelled audio ---------------------------------------------------------------


@dataclass(frozen=True)
class SpeciesSplit:
    """The species without labelled audio, and those held out too when choosing how to answer for them."""

    unseen: tuple[str, ...]  # scientific names: in the gallery and the queries, never in training
    held_out: tuple[str, ...]  # labelled species also left out of training when choosing the hybrids
    named: tuple[str, ...]  # the species the students' captions name (at the selection coverage)

    @property
    def tag(self) -> str:
        return hashlib.sha256("|".join(self.unseen + ("/",) + self.held_out).encode()).hexdigest()[:8]


def split_species(taxa: list[Any], named: set[str], genera: int, seed: int = 0) -> SpeciesSplit:
    """One species from each of ``genera`` genera without labelled audio, and as many more held out.

    Genera of two or more species are taken in a seeded order. The i-th pick wants a species the
    captions name when i is even and one they do not name when i is odd, and takes it from the next
    genus that has one (any species of the next genus when none has), so both kinds are dropped.
    The first ``genera`` picks are the unseen species, the next ``genera`` the held-out ones.
    """
    import numpy as np

    by_genus: dict[str, list[str]] = {}
    for taxon in taxa:
        by_genus.setdefault(taxon.genus, []).append(taxon.scientific)
    eligible = sorted(g for g, members in by_genus.items() if len(members) >= 2)
    count = min(genera, len(eligible) // 2)
    if count < 1:
        raise ConfigError(f"the world has {len(eligible)} genera of two or more species: too few to drop one")
    rng = np.random.default_rng([seed, 22])
    left = [eligible[i] for i in rng.permutation(len(eligible))]
    picked = []
    for i in range(2 * count):
        wanted = i % 2 == 0  # named, not named, named, ...
        genus = next((g for g in left if any((m in named) == wanted for m in by_genus[g])), left[0])
        left.remove(genus)
        members = sorted(by_genus[genus])
        preferred = [m for m in members if (m in named) == wanted] or members
        picked.append(preferred[int(rng.integers(len(preferred)))])
    return SpeciesSplit(tuple(sorted(picked[:count])), tuple(sorted(picked[count:])), tuple(sorted(named)))


def write_manifests(world: Any, split: SpeciesSplit, where: Path) -> dict[str, Path]:
    """The labelled recordings a user would have, as distillation manifests and species tables.

    ``labelled``: the training and validation rows of every species with labelled audio, and
    ``labelled_taxa`` those species (distillation's targets); ``choice``/``choice_taxa``: the same
    without the held-out species; ``choice_queries``: the validation rows of every labelled species.
    """
    paths = {name: where / f"{name}.csv" for name in ("labelled", "labelled_taxa", "choice", "choice_taxa", "choice_queries")}  # fmt: skip
    if all(p.is_file() for p in paths.values()):
        return paths
    where.mkdir(parents=True, exist_ok=True)
    rows = world.read_manifest(world.distill_manifest)
    taxa = world.read_manifest(world.taxa_csv)
    labelled = [r for r in rows if r["species"] not in split.unseen]
    choice = [r for r in labelled if r["species"] not in split.held_out]
    write_csv(paths["labelled"], labelled)
    write_csv(paths["labelled_taxa"], [t for t in taxa if t["scientific_name"] not in split.unseen])
    write_csv(paths["choice"], choice)
    write_csv(
        paths["choice_taxa"], [t for t in taxa if t["scientific_name"] not in split.unseen + split.held_out]
    )
    write_csv(paths["choice_queries"], [r for r in labelled if r["split"] == "val"])
    return paths


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


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


def named_species(student: Path) -> set[str]:
    """The species whose names a student's captions give (both realistic students share them)."""
    return set(json.loads((student / "toy_captions.json").read_text())["captioned"])


# ---- distillation and evaluation ----------------------------------------------------------------------


def distilled(
    cfg: StudyConfig,
    world: Any,
    student: Path,
    data: tuple[Path, Path],
    run: Path,
    setting: dict[str, Any],
    seed: int,
    target: str = "teacher",
) -> Path:
    """A distilled encoder on ``data`` (manifest, species table), reused when the run finished before."""
    from birdsearch.model.distill.trainer import DistillConfig, distill

    encoder = run / "encoder"
    if (encoder / "card.json").is_file():
        return encoder
    manifest, taxa = data
    config = DistillConfig(
        manifest=str(manifest), out=str(run), teacher=world.teacher_spec, student=f"local-dir:{student}",
        taxa=str(taxa), target=target, objective=cfg.objective, epochs=setting["epochs"],
        schedule_epochs=setting["schedule_epochs"], init_temperature=cfg.temperature,
        batch_size=cfg.batch_size, lr=setting["lr"], seed=seed, device=cfg.device, workers=0, progress=False,
        species_classifier=False,  # the study fits the controls itself (birdsearch evaluate)
    )  # fmt: skip
    result = distill(config)
    assert result.encoder_dir is not None, "no stop_after: the run finished"
    return result.encoder_dir


def evaluated(path: Path, config: Any) -> dict[str, Any]:
    """``birdsearch evaluate`` with ``config`` (reused when done before)."""
    from birdsearch.model.evaluate.report import clean
    from birdsearch.model.evaluate.run import evaluate

    if path.is_file():
        return json.loads(path.read_text())
    result = clean(evaluate(config))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=str))
    tmp.replace(path)
    return result


def select_distillation(cfg: StudyConfig, world: Any, work: Path, data: tuple[Path, Path]) -> dict[str, Any]:
    """Each learning rate for ``max_epochs`` (seed 0); the (lr, epochs) with the best validation cmAP."""
    student = student_dir(world, cfg.selection_student, cfg.selection_coverage)
    settings = [{"lr": lr, "epochs": cfg.max_epochs, "schedule_epochs": cfg.max_epochs} for lr in cfg.lrs]
    encoders = side_by_side(
        [
            (distilled, (cfg, world, student, data, work / "selection" / setting_name(s), s, 0))
            for s in settings
        ]
    )
    grid = []
    for setting, encoder in zip(settings, encoders, strict=True):
        lr = setting["lr"]
        history = json.loads((encoder / "card.json").read_text())["metrics"]["val_history"]
        by_epoch = {h["epoch"] + 1: h for h in history}
        for epochs in cfg.candidate_epochs():
            grid.append({"lr": lr, "epochs": epochs, "val_cmAP": by_epoch[epochs]["val_cmAP"]})
    best = max(grid, key=lambda g: (g["val_cmAP"], -g["epochs"], -g["lr"]))
    return {
        "setting": {"lr": best["lr"], "epochs": best["epochs"], "schedule_epochs": cfg.max_epochs},
        "val_cmAP": best["val_cmAP"],
        "grid": grid,
        "val_clips": history[-1]["val_clips"],
        "on": f"{cfg.selection_student} student at caption coverage {cfg.selection_coverage:g}, seed 0",
    }


def setting_name(setting: dict[str, Any]) -> str:
    return f"lr{setting['lr']:g}-e{setting['epochs']}-of{setting['schedule_epochs']}"


def evaluate_config(
    cfg: StudyConfig, world: Any, student: Path, encoders: dict[str, Path], **fields: Any
) -> Any:
    from birdsearch.model.evaluate.run import EvaluateConfig

    return EvaluateConfig(
        teacher=world.teacher_spec, student=f"local-dir:{student}", taxa=str(world.taxa_csv),
        encoders=[f"{name}={p}" for name, p in encoders.items()], device=cfg.device,
        control_objective=cfg.objective, plots=False, **fields,
    )  # fmt: skip


def select_answers(
    cfg: StudyConfig,
    world: Any,
    where: Path,
    student: Path,
    manifests: dict[str, Path],
    setting: dict[str, Any],
) -> dict[str, Any]:
    """Offsets, hard or soft, and the snap variant, chosen on the held-out labelled species (seed 0)."""
    from birdsearch.model.evaluate.controls import CONTROL_METHODS

    encoder = distilled(
        cfg, world, student, (manifests["choice"], manifests["choice_taxa"]), where / "distilled", setting, 0
    )
    config = evaluate_config(
        cfg, world, student, {"distilled": encoder}, dataset=f"manifest:{manifests['choice_queries']}",
        split="val", gallery=str(world.gallery_manifest), train_manifest=str(manifests["choice"]),
        methods=tuple(m for m in CONTROL_METHODS if m.startswith("linear-cascade")),
        unseen_offsets=cfg.offsets, seed=0,
    )  # fmt: skip
    result = evaluated(where / "val.json", config)
    scores = {name: m["retrieval"]["mAP"] for name, m in result["queries"]["methods"].items()}
    candidates = {
        "distilled+snap": [("distilled", None), ("distilled+snap-hard", None), ("distilled+snap-soft", None)],
        "linear-cascade-hard": [("linear-cascade-hard", o) for o in cfg.offsets],
        "linear-cascade-soft": [("linear-cascade-soft", o) for o in cfg.offsets],
        "hybrid": [(f"distilled+hybrid-{kind}", o) for kind in ("hard", "soft") for o in cfg.offsets],
    }
    chosen = {}
    for method, options in candidates.items():
        method_name, offset = max(options, key=lambda mo: scores[evaluated_name(*mo, cfg.offsets)])
        chosen[method] = {"method": method_name, "offset": offset,
                          "val_mAP": scores[evaluated_name(method_name, offset, cfg.offsets)]}  # fmt: skip
    return {"chosen": chosen, "val_mAP": scores, "queries": result["queries"]["queries"]}


def evaluated_name(method: str, offset: float | None, offsets: tuple[float, ...]) -> str:
    """The name ``birdsearch evaluate`` gives a method at ``offset`` when it evaluated ``offsets``."""
    from birdsearch.model.evaluate.baselines import offset_variants

    if offset is None:
        return method
    return next(name for name, o in offset_variants(method, offsets) if o == offset)


def test_offsets(answers: dict[str, Any]) -> tuple[float, ...]:
    """The offsets the test evaluation needs: those chosen on validation."""
    return tuple(sorted({c["offset"] for c in answers["chosen"].values() if c["offset"] is not None}))


def run_cell(
    cfg: StudyConfig,
    world: Any,
    cell: Path,
    student: Path,
    manifests: dict[str, Path],
    setting: dict[str, Any],
    answers: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """One student × coverage × seed: distil (and the ablation), evaluate every method on the test split."""
    from birdsearch.model.evaluate.run import DEFAULT_METHODS

    data = (manifests["labelled"], manifests["labelled_taxa"])
    encoders = {"distilled": distilled(cfg, world, student, data, cell / "distilled", setting, seed)}
    if cfg.ablation:
        encoders["ablation"] = distilled(
            cfg, world, student, data, cell / "ablation", setting, seed, "student-text"
        )
    config = evaluate_config(
        cfg, world, student, encoders, dataset=f"toy:{cfg.preset}", split="test", seed=seed,
        methods=DEFAULT_METHODS, train_manifest=str(manifests["labelled"]), per_item=True,
        unseen_offsets=test_offsets(answers) or (0.0,),
    )  # fmt: skip
    return pick_chosen(evaluated(cell / "test.json", config), answers)


def pick_chosen(result: dict[str, Any], answers: dict[str, Any]) -> dict[str, Any]:
    """The report's methods: the fixed ones as they are, and each chosen variant under its report name."""
    offsets = test_offsets(answers) or (0.0,)
    for section in ("queries", "soundscapes"):
        methods = result[section]["methods"]
        kept = {
            n: m
            for n, m in methods.items()
            if "@" not in n and "+" not in n and not n.startswith("linear-cascade")
        }
        for name in CHOSEN:
            choice = answers["chosen"][name]
            kept[name] = methods[evaluated_name(choice["method"], choice["offset"], offsets)]
        result[section]["methods"] = kept
    return result


# ---- intervals ------------------------------------------------------------------------------------------


def groups_of(queries: dict[str, Any], split: SpeciesSplit, named: set[str]) -> dict[str, Any]:
    """Each group's query indices (by the query's species)."""
    import numpy as np

    species = np.array(queries["species"])[np.array(queries["labels"])]
    audio = ~np.isin(species, split.unseen)
    said = np.isin(species, sorted(named))
    masks = {
        "all": np.ones(len(species), dtype=bool), "with audio": audio, "without audio": ~audio,
        "without audio, named": ~audio & said, "without audio, not named": ~audio & ~said,
        "with audio, named": audio & said, "with audio, not named": audio & ~said,
    }  # fmt: skip
    return {name: np.flatnonzero(mask) for name, mask in masks.items()}


def summarise(
    cells: list[dict[str, Any]], split: SpeciesSplit, named: set[str], resamples: int
) -> dict[str, Any]:
    """Per method and group: [mean, low, high] of each metric; per comparison: the paired differences."""
    import numpy as np

    queries = [c["queries"] for c in cells]
    labels = np.array(queries[0]["labels"])
    methods = list(queries[0]["methods"])
    values = {
        m: {k: np.array([[np.nan if v is None else v for v in q["methods"][m]["per_query"][key]] for q in queries])
            for k, key in METRICS.items()}
        for m in methods
    }  # fmt: skip
    out: dict[str, Any] = {"methods": {m: {} for m in methods}, "comparisons": [], "queries": {}}
    for group, items in groups_of(queries[0], split, named).items():
        out["queries"][group] = len(items)
        if len(items):
            per_method, comparisons = group_intervals(values, labels, items, resamples)
            for m in methods:
                out["methods"][m][group] = per_method[m]
            out["comparisons"] += [{**c, "group": group} for c in comparisons]
    out["soundscape cmAP"] = soundscape_means(cells)
    return out


def group_intervals(
    values: dict[str, dict[str, Any]], labels: Any, items: Any, resamples: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Intervals of every method, and paired intervals of every comparison, on the queries ``items``.

    One set of resamples serves every method and comparison: that is what makes them paired.
    """
    from birdsearch.model import metrics

    runs = len(next(iter(next(iter(values.values())).values())))
    strata = labels[items]
    draws = metrics.bootstrap_draws(runs, strata, resamples, seed=0)

    def interval(statistic: Any) -> list[float]:
        return list(metrics.bootstrap_interval(statistic, runs, strata, resamples, draws=draws))

    stats = {
        m: {k: metrics.query_mean(v[:, items]) for k, v in by_metric.items()}
        for m, by_metric in values.items()
    }
    per_method = {m: {k: interval(stat) for k, stat in by_metric.items()} for m, by_metric in stats.items()}
    comparisons = [
        {"method": a, "opponent": b, "difference": {k: interval(metrics.difference(stats[a][k], stats[b][k])) for k in METRICS}}
        for a, b in COMPARISONS
        if a in stats and b in stats
    ]  # fmt: skip
    return per_method, comparisons


def soundscape_means(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean soundscape cmAP over seeds per method; an interval only with enough recordings."""
    import numpy as np

    from birdsearch.model import metrics

    sound = [c["soundscapes"] for c in cells]
    recordings = np.unique(np.array(sound[0]["recordings"]), return_inverse=True)[1]
    positives = np.array(sound[0]["labels"], dtype=bool)
    out: dict[str, Any] = {
        "recordings": int(recordings.max()) + 1,
        "segments": len(recordings),
        "methods": {},
    }
    for method in sound[0]["methods"]:
        scores = np.array([s["methods"][method]["scores"] for s in sound])
        statistic = metrics.cmap_of(scores, positives)
        if out["recordings"] >= MIN_SOUNDSCAPE_RECORDINGS:
            out["methods"][method] = list(metrics.bootstrap_interval(statistic, len(sound), recordings))
        else:
            out["methods"][method] = [
                metrics.nanmean(
                    np.array([statistic(r, np.arange(len(recordings))) for r in range(len(sound))])
                )
            ]
    return out


def verdict(difference: list[float]) -> str:
    """How a paired [mean, low, high] difference reads: a direction only when the interval excludes 0."""
    if difference[1] > 0:
        return "higher"
    if difference[2] < 0:
        return "lower"
    return "not separated"


# ---- the study ------------------------------------------------------------------------------------------


def run_study(cfg: StudyConfig) -> dict[str, Any]:
    """Run (or continue) the whole study and write its report; returns the report's data."""
    from birdsearch.paths import cache_root
    from birdsearch.toy.training import torch_threads
    from birdsearch.toy.world import ensure_world

    cfg.validate()
    started = time.time()
    world = ensure_world(cfg.preset, progress=False)
    if not world.student_manifest.is_file():  # models installed, not trained: the study trains students
        world = ensure_world(cfg.preset, stages=("student-audio",), progress=False)
    work = Path(cfg.work) if cfg.work else cache_root() / "study" / cfg.preset
    if cfg.finished_only and not (work / "splits").is_dir():
        raise ConfigError(f"{work}: no study has run there yet; run it without --finished-only first")
    with torch_threads(1):  # each process of side_by_side, too: the same figures however it is spread
        named = named_species(student_dir(world, "realistic", cfg.selection_coverage))
        split = split_species(world.taxa, named, cfg.unseen_genera)
        base = work / "splits" / split.tag
        manifests = write_manifests(world, split, base / "manifests")
        selection = select_distillation(cfg, world, base, (manifests["labelled"], manifests["labelled_taxa"]))
        setting = selection["setting"]
        log.info("distillation chosen on validation: %s", setting)
        state = {"split": split, "selection": selection, "answers": {}, "results": {}, "started": started}
        total = len(cfg.students) * len(cfg.coverages)
        data = report_data(cfg, world, state, 0, total)
        todo = []
        for coverage in cfg.coverages:
            for kind in cfg.students:
                where = base / f"{kind}-c{coverage:g}" / setting_name(setting)
                cells_done = [where / f"seed{s}" / "test.json" for s in cfg.seeds]
                if cfg.finished_only and not all(p.is_file() for p in cells_done):
                    continue
                todo.append((kind, coverage, where, student_dir(world, kind, coverage)))
        jobs = [
            (student_cells, (cfg, world, where, student, manifests, setting)) for _, _, where, student in todo
        ]
        for (kind, coverage, where, student), (answers, cells) in zip(todo, side_by_side(jobs), strict=True):
            label = f"{kind}, coverage {coverage:g}"
            state["answers"][label] = answers
            state["results"][label] = cached_summary(where, cfg, cells, split, named_species(student))
            data = report_data(cfg, world, state, len(state["results"]), total)
            write_report(data, Path(cfg.out))  # after every cell: an interrupted study has a report
    return data


def student_cells(
    cfg: StudyConfig,
    world: Any,
    where: Path,
    student: Path,
    manifests: dict[str, Path],
    setting: dict[str, Any],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One student × coverage: how the hybrids answer (chosen on validation), then every seed's cell."""
    answers = select_answers(cfg, world, where / "answers", student, manifests, setting)
    cells = [
        run_cell(cfg, world, where / f"seed{s}", student, manifests, setting, answers, s) for s in cfg.seeds
    ]
    return answers, cells


def side_by_side(jobs: list[tuple[Any, tuple[Any, ...]]]) -> list[Any]:
    """``function(*args)`` of each job, in order, in as many processes as there are cores (one torch
    thread each, as in a single process: the figures do not depend on how the work is spread)."""
    from birdsearch.cpus import available_cpus
    from birdsearch.toy.parallel import call, ordered_map

    wrapped = [(one_thread, (function, *args)) for function, args in jobs]
    return list(ordered_map(call, wrapped, workers=available_cpus(), min_items=1))


def one_thread(function: Any, *args: Any) -> Any:
    """``function(*args)`` on one torch thread (a process of ``side_by_side``)."""
    from birdsearch.toy.training import torch_threads

    with torch_threads(1):
        return function(*args)


def cached_summary(
    where: Path, cfg: StudyConfig, cells: list[dict[str, Any]], split: SpeciesSplit, named: set[str]
) -> dict[str, Any]:
    """``summarise`` kept beside the runs (the bootstrap is the slow part of a report)."""
    seeds = "-".join(map(str, cfg.seeds))
    path = where / f"summary-s{seeds}-r{cfg.resamples}-a{int(cfg.ablation)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    result = summarise(cells, split, named, cfg.resamples)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)
    return result


def report_data(cfg: StudyConfig, world: Any, state: dict[str, Any], done: int, total: int) -> dict[str, Any]:
    """What study.json holds (and study.md shows); ``done`` of ``total`` student × coverage cells so far."""
    from birdsearch.model.evaluate import controls

    split: SpeciesSplit = state["split"]
    return {
        "config": {**asdict(cfg), "offsets": [f"{o:g}" for o in cfg.offsets]},
        "world": {
            "preset": cfg.preset,
            "species": world.config.n_species,
            "genera": len({t.genus for t in world.taxa}),
            "root": world.root.name,
        },  # fmt: skip
        "species": {
            "without audio": list(split.unseen),
            "held out for the hybrids": list(split.held_out),
            "named": list(split.named),
        },  # fmt: skip
        "budgets": {
            "distillation": {"lrs": list(cfg.lrs), "epochs": cfg.candidate_epochs(), "chosen once": True},
            "controls": {
                "lrs": list(controls.LEARNING_RATES),
                "epochs": list(range(controls.CHECK_EVERY, controls.MAX_EPOCHS + 1, controls.CHECK_EVERY)),
                "chosen once": False,
            },  # fmt: skip
        },
        "selection": state["selection"],
        "answers": {label: jsonable(a) for label, a in state["answers"].items()},
        "results": state["results"],
        "cells": {"done": done, "total": total},
        "minutes": round((time.time() - state["started"]) / 60, 1),
    }


def jsonable(answers: dict[str, Any]) -> dict[str, Any]:
    """Offsets as text ("-inf" is no JSON number)."""
    chosen = {
        name: {**c, "offset": None if c["offset"] is None else f"{c['offset']:g}"}
        for name, c in answers["chosen"].items()
    }
    return {**answers, "chosen": chosen}


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
    defaults = StudyConfig()

    def listed(values: tuple[Any, ...]) -> str:
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)

    parser.add_argument("--preset", default=defaults.preset, help="toy world preset (default: %(default)s)")
    parser.add_argument(
        "--coverages", default=listed(defaults.coverages), help="caption coverages (default: %(default)s)"
    )
    parser.add_argument(
        "--seeds", default=listed(defaults.seeds), help="training seeds per cell (default: %(default)s)"
    )
    parser.add_argument("--students", default=",".join(STUDENTS))
    parser.add_argument("--ablation", action="store_true",
                        help="also distil the ablation without visual grounding in every cell (doubles the cells' training)")  # fmt: skip
    parser.add_argument(
        "--unseen-genera",
        type=int,
        default=defaults.unseen_genera,
        help="genera that lose one species' labelled audio (default: %(default)s)",
    )
    parser.add_argument(
        "--lrs", default=listed(defaults.lrs), help="distillation's learning rates (default: %(default)s)"
    )
    parser.add_argument(
        "--max-epochs",
        type=int,
        default=defaults.max_epochs,
        help="distillation's longest run; epoch candidates every --check-every (default: %(default)s)",
    )
    parser.add_argument("--check-every", type=int, default=defaults.check_every)
    parser.add_argument(
        "--offsets",
        default=listed(defaults.offsets),
        help="the hybrids' zero-shot offsets to choose from; -inf: closed set (default: %(default)s)",
    )
    parser.add_argument("--resamples", type=int, default=defaults.resamples, help="bootstrap resamples")
    parser.add_argument("--work", help="where runs are kept (default: the cache)")
    parser.add_argument("--out", default="docs", help="folder for study.md, study.json, study.png")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--finished-only",
        action="store_true",
        help="write the report from the cells already finished (e.g. by runs in parallel); train nothing",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="the tiny world, two seeds, two epochs: checks the wiring"
    )
    args = parser.parse_args(argv)

    def floats(text: str) -> tuple[float, ...]:
        return tuple(float(x) for x in text.split(",") if x.strip())

    def ints(text: str) -> tuple[int, ...]:
        return tuple(int(x) for x in text.split(",") if x.strip())

    cfg = StudyConfig(
        preset=args.preset, coverages=floats(args.coverages), seeds=ints(args.seeds),
        students=tuple(s.strip() for s in args.students.split(",") if s.strip()), ablation=args.ablation,
        unseen_genera=args.unseen_genera, lrs=floats(args.lrs), max_epochs=args.max_epochs,
        check_every=args.check_every, offsets=floats(args.offsets), resamples=args.resamples,
        work=args.work, finished_only=args.finished_only, out=args.out, device=args.device,
    )  # fmt: skip
    if args.smoke:
        cfg = replace(cfg, **SMOKE)
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
