"""``birdsearch evaluate``: every method on the same queries, gallery and soundscapes, side by side.

For each data set: the query recordings are decoded once, in windows of the student's front end;
every method embeds the same windows (a clip's embedding is the renormalised mean of its windows);
then audio-to-image retrieval against the gallery (any photo of the query's species is relevant),
audio classification against the teacher's species text embeddings, and for soundscapes, 5 s
segments classified the same way (multi-label). The report (``report.py``) records the full
configuration with the numbers.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from birdsearch.errors import ConfigError
from birdsearch.model import metrics
from birdsearch.model.distill.data import windows_of
from birdsearch.model.distill.manifest import Clip
from birdsearch.model.distill.targets import TargetSpec, species_targets, weights_checksum
from birdsearch.model.evaluate import baselines, controls, datasets
from birdsearch.model.evaluate.controls import CONTROL_METHODS
from birdsearch.model.evaluate.gallery import GalleryVectors
from birdsearch.model.hub import DEFAULT_STUDENT, DEFAULT_TEACHER
from birdsearch.model.mel import FrontEndConfig
from birdsearch.model.names import Taxon
from birdsearch.model.registry import DATA_SETS, data_set
from birdsearch.model.student import PROMPT

log = logging.getLogger(__name__)

DEFAULT_METHODS = (
    "random", "cascade-hard", "cascade-soft", "map-ridge", "map-procrustes", "map-mlp", *CONTROL_METHODS,
)  # fmt: skip


@dataclass
class EvaluateConfig:
    """What to evaluate, on what, with which models."""

    dataset: str = "toy"  # ssw60:DIR | manifest:PATH | none | a registered data set: toy, toy:PRESET
    soundscapes: str | None = None  # a BirdSet-style folder, or "toy" (default with a registered data set)
    taxa: str | None = None  # species table for manifest: and soundscape data sets
    index: str | None = None  # an index root built by 'birdsearch index' (the gallery to search)
    gallery: str | None = None  # or a gallery manifest (path, species) embedded here with the teacher
    encoders: list[str] = field(default_factory=list)  # distilled encoders, "DIR" or "NAME=DIR"
    methods: tuple[str, ...] = DEFAULT_METHODS  # baselines to include
    teacher: str | None = None  # None: the data set's default (the toy world's, or BioCLIP-2)
    student: str | None = None  # None: the data set's default (the toy world's, or BioLingual)
    device: str = "auto"
    name_format: str = "taxon_com"  # teacher species names for classification and the cascade
    templates: str = "openai"
    split: str = "test"  # which audio split queries; never falls back to other rows
    image_sources: tuple[str, ...] = ("nabirds", "inat")  # SSW60 photos in the gallery
    max_queries: int | None = None  # at most N queries, spread evenly across species (seeded)
    segment_s: float = 5.0  # soundscape segment length
    vote_k: int = 10  # images voting for the species
    snap: bool = True  # also evaluate each distilled encoder snapped onto the species' text (NAME+snap-*)
    train_manifest: str | None = (
        None  # the controls' labelled clips (default: a registered data set's distillation manifest)
    )
    control_objective: str = "batch"  # the distillation objective the linear-head control trains with
    # Offsets of the zero-shot side of the hybrids (linear cascade and NAME+hybrid-*) for species the
    # training manifest has no clips of; several: one method per offset, NAME@OFFSET (baselines).
    unseen_offsets: tuple[float, ...] = (0.0,)
    per_item: bool = False  # keep per-query AP/nDCG and soundscape scores (for intervals over several runs)
    seed: int = 0  # the random baseline, learned maps and the --max-queries sample
    out: str | None = None  # report directory (Markdown, JSON, PNG)
    plots: bool = True


@dataclass
class Models:
    teacher_spec: str
    student: Any
    encoders: dict[str, Any]
    teacher: Any = None  # loaded only when a gallery must be embedded here
    controls: dict[tuple[str, ...], dict[str, Any]] = field(default_factory=dict)  # fitted, per species list


def parse_encoders(entries: list[str]) -> dict[str, Path]:
    """ "NAME=DIR" or "DIR" (named after the folder, or its parent for a run's encoder/) to {name: dir}."""
    out: dict[str, Path] = {}
    for entry in entries:
        name, _, path = entry.rpartition("=") if "=" in entry else ("", "", entry)
        path_obj = Path(path)
        if not name:
            name = path_obj.parent.name if path_obj.name == "encoder" else path_obj.name
            name = f"distilled:{name}"
        if name in out:
            raise ConfigError(f"two encoders named {name!r}: name them, e.g. --encoder mine={path}")
        out[name] = path_obj
    return out


def embed_clips(
    clips: list[Clip], methods: list[baselines.Method], front_end: FrontEndConfig, chunk: int = 32
) -> dict[str, torch.Tensor]:
    """(clips, dim) embeddings per method; each clip decoded once, its windows shared by all methods."""
    out: dict[str, list[torch.Tensor]] = {m.name: [] for m in methods}
    timings = {m.name: 0.0 for m in methods}
    from tqdm import tqdm

    with ThreadPoolExecutor(4) as pool:
        for start in tqdm(range(0, len(clips), chunk), desc="embedding", unit="chunk", leave=False):
            per_clip = list(pool.map(lambda c: windows_of(c, front_end), clips[start : start + chunk]))
            owner = torch.repeat_interleave(
                torch.arange(len(per_clip)), torch.tensor([len(w) for w in per_clip])
            )
            windows = np.concatenate(per_clip)
            for method in methods:
                began = time.perf_counter()
                emb = method.embedder.embed_windows(windows)
                timings[method.name] += time.perf_counter() - began
                out[method.name].append(pool_windows(emb, owner, len(per_clip)))
    log.debug("embedding seconds per method: %s", timings)
    return {name: torch.cat(parts) for name, parts in out.items()}


def pool_windows(windows: torch.Tensor, owner: torch.Tensor, clips: int) -> torch.Tensor:
    """(clips, dim) unit means of (windows, dim) window embeddings, ``owner`` the clip of each window.

    Summed and normalised in float64, then rounded to float32, so that clips whose windows hold the
    same vectors get the same bits whatever their number of windows (see ``cosines``).
    """
    pooled = torch.zeros(clips, windows.shape[1], dtype=torch.float64).index_add_(0, owner, windows.double())
    return F.normalize(pooled, dim=-1).float()


def cosines(queries: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(queries, targets) scores: float64 sums rounded to float32, the same bits on every kind of CPU.

    A float32 matrix product sums in an order that depends on the CPU's vector units (and on the
    row's place in the kernel's tiles), so scores that are equal in exact arithmetic, such as the
    queries a hard cascade sends to the same species' text, differ in their last bits, and the
    ranking breaks their tie differently on each CPU. In float64 the order changes only bits that
    rounding to float32 drops, so equal scores stay equal and ties keep the queries' order. The
    clips' pooling (``pool_windows``) does the same.
    """
    return (queries.astype(np.float64) @ targets.astype(np.float64).T).astype(np.float32)


def load_models(cfg: EvaluateConfig, teacher_spec: str, student_spec: str, need_teacher: bool) -> Models:
    from birdsearch.model.encoder import load_encoder
    from birdsearch.model.student import Student

    student = Student.load(student_spec, cfg.device)
    encoders = {name: load_encoder(path, cfg.device) for name, path in parse_encoders(cfg.encoders).items()}
    for name, encoder in encoders.items():
        if encoder.front_end_config != student.front_end_config:
            raise ConfigError(
                f"encoder {name} ({encoder.path}) was trained on other audio features than student "
                f"{student.id} makes ({encoder.front_end_config} vs {student.front_end_config}); evaluate it "
                f"with --student {encoder.card.base_student}"
            )
    teacher = None
    if need_teacher:
        from birdsearch.model.teacher import Teacher

        teacher = Teacher.load(teacher_spec, cfg.device)
    return Models(teacher_spec, student, encoders, teacher)


def build_methods(
    cfg: EvaluateConfig, models: Models, taxa: list[Taxon]
) -> tuple[list[baselines.Method], torch.Tensor]:
    """The methods for one species list, and the teacher's species embeddings they are scored against."""
    spec = TargetSpec("teacher", cfg.name_format, cfg.templates)
    teacher_species = species_targets(
        spec, taxa, models.teacher_spec, models.student.id, cfg.device
    ).embeddings
    student_species = models.student.embed_species(taxa, "com", PROMPT)
    fitted = fit_controls(cfg, models, taxa, student_species, teacher_species)
    student = baselines.SharedStudent(models.student)
    offsets = tuple(cfg.unseen_offsets)
    methods = baselines.student_methods(
        student, student_species, teacher_species, tuple(cfg.methods), cfg.seed, fitted, offsets
    )
    teacher_sha = weights_checksum(models.teacher_spec, "teacher")[1] if models.encoders else ""
    hybrid = (student, fitted["classifier"]) if "classifier" in fitted else None
    for name, encoder in models.encoders.items():
        methods += baselines.encoder_methods(
            name, encoder, student_species, teacher_species, models.teacher_spec, teacher_sha,
            snap=cfg.snap, hybrid=hybrid, offsets=offsets, served=(student, [t.scientific for t in taxa]),
        )  # fmt: skip
    return methods, teacher_species


def fit_controls(
    cfg: EvaluateConfig,
    models: Models,
    taxa: list[Taxon],
    student_species: torch.Tensor,
    teacher_species: torch.Tensor,
) -> dict[str, Any]:
    """The supervised controls the methods ask for, fitted once per species list on the training manifest."""
    wanted = [m for m in cfg.methods if m in CONTROL_METHODS]
    key = tuple(t.scientific for t in taxa)
    if not wanted or key in models.controls:
        return models.controls.get(key, {})
    if not cfg.train_manifest:
        raise ConfigError(
            f"methods {', '.join(wanted)} learn from the distillation's labelled clips: pass --train-manifest "
            "(the manifest given to 'birdsearch distill'), or leave them out of --methods"
        )
    train, val = controls.training_clips(cfg.train_manifest, taxa, cfg.taxa, cfg.seed)
    front_end = models.student.front_end_config
    features = controls.frozen_features(models.student, train, val, front_end)
    fitted = {}
    if "linear-head" in wanted:
        fitted["head"] = controls.fit_head(
            features, student_species, teacher_species, cfg.control_objective, seed=cfg.seed
        )
    if any(m.startswith("linear-cascade") for m in wanted):
        fitted["classifier"] = controls.fit_classifier(features, student_species, seed=cfg.seed)
    for kind, control in fitted.items():
        log.info("control %s: %s", kind, {k: v for k, v in control.chosen.items() if k != "grid"})
    models.controls[key] = fitted
    return fitted


def per_species_mean(values: np.ndarray, labels: np.ndarray, n: int) -> list[float | None]:
    out = []
    for s in range(n):
        chosen = values[labels == s]
        chosen = chosen[np.isfinite(chosen)]
        out.append(float(chosen.mean()) if chosen.size else None)
    return out


def evaluate_queries(
    cfg: EvaluateConfig, queries: datasets.QuerySet, gallery: GalleryVectors | None, models: Models
) -> dict[str, Any]:
    """Retrieval and classification for every method on one query set."""
    methods, teacher_species = build_methods(cfg, models, queries.taxa)
    clips = datasets.sample_queries(queries.clips, cfg.max_queries, cfg.seed)
    labels = np.array([c.species for c in clips])
    embeddings = embed_clips(clips, methods, models.student.front_end_config)
    gallery_labels = gallery.labels(queries.taxa) if gallery is not None else None
    genera = np.unique([t.genus for t in queries.taxa], return_inverse=True)[1].ravel()
    levels = np.linspace(0, 1, 101)
    results: dict[str, Any] = {}
    for method in methods:
        q = embeddings[method.name].numpy()
        entry: dict[str, Any] = {"description": method.description}
        cls = metrics.classification_metrics(cosines(q, teacher_species.numpy()), labels)
        entry["classification"] = {"top1": cls["top1"], "cmAP": cls["cmAP"]}
        entry["per_species"] = {
            "classification_AP": [None if np.isnan(v) else float(v) for v in cls["per_class_AP"]]
        }
        if gallery is not None:
            scores = cosines(q, gallery.vectors)
            ret = metrics.retrieval_metrics(scores, labels, gallery_labels, vote_k=cfg.vote_k)
            per_query = ret.pop("per_query")
            per_query["AP genus"] = metrics.genus_ap(scores, labels, gallery_labels, genera)
            ret["genus mAP"] = metrics.nanmean(per_query["AP genus"])
            entry["retrieval"] = ret
            entry["interval_95"] = {
                "mAP": metrics.bootstrap_interval(metrics.query_mean(per_query["AP"][None]), 1, labels)[1:],
                "class mAP": metrics.bootstrap_interval(
                    metrics.class_mean(per_query["AP"][None], labels), 1, labels
                )[1:],
                "nDCG@10": metrics.bootstrap_interval(
                    metrics.query_mean(per_query["nDCG@10"][None]), 1, labels
                )[1:],
            }  # queries resampled within species (one run: the training seed's spread is not in it)
            entry["per_species"]["retrieval_AP"] = per_species_mean(
                per_query["AP"], labels, len(queries.taxa)
            )
            if cfg.per_item:
                entry["per_query"] = {k: per_query[k].tolist() for k in ("AP", "AP genus", "nDCG@10")}
            curves = [
                metrics.interpolated_precision(row, gallery_labels == y, levels)
                for row, y in zip(scores, labels, strict=True)
            ]
            entry["pr_curve"] = {
                "recall": levels.tolist(),
                "precision": np.nanmean(np.array(curves), axis=0).tolist(),
            }
        results[method.name] = entry
    return {
        "name": queries.name,
        "queries": len(clips),
        "species": [t.scientific for t in queries.taxa],
        "common_names": [t.common for t in queries.taxa],
        "facts": queries.facts,
        "controls": {
            kind: {k: v for k, v in control.chosen.items() if k != "grid"}
            for kind, control in models.controls.get(tuple(t.scientific for t in queries.taxa), {}).items()
        },
        **({"labels": labels.tolist()} if cfg.per_item else {}),
        "gallery": None
        if gallery is None
        else {
            "images": len(gallery.vectors),
            **gallery.facts,
            "images_of_evaluated_species": int((np.asarray(gallery_labels) >= 0).sum()),
        },  # fmt: skip
        "methods": results,
    }


def evaluate_soundscapes(
    cfg: EvaluateConfig, soundscapes: datasets.SoundscapeSet, models: Models
) -> dict[str, Any]:
    """Multi-label classification of soundscape segments against the teacher's species text."""
    methods, teacher_species = build_methods(cfg, models, soundscapes.taxa)
    embeddings = embed_clips(soundscapes.segments, methods, models.student.front_end_config)
    results = {}
    for method in methods:
        scores = cosines(embeddings[method.name].numpy(), teacher_species.numpy())
        out = metrics.multilabel_metrics(scores, soundscapes.labels)
        recordings = np.unique([str(c.path) for c in soundscapes.segments], return_inverse=True)[1]
        statistic = metrics.cmap_of(scores[None], soundscapes.labels)
        out["cmAP_interval_95"] = metrics.bootstrap_interval(statistic, 1, recordings, resamples=200)[1:]
        per_class = out.pop("per_class_AP")
        out.pop("per_class_AUROC")
        results[method.name] = {"description": method.description, "soundscape": out,
                                "per_species": {"soundscape_AP": [None if np.isnan(v) else float(v) for v in per_class]}}  # fmt: skip
        if cfg.per_item:
            results[method.name]["scores"] = scores.tolist()
    return {
        "name": soundscapes.name,
        "segments": len(soundscapes.segments),
        "species": [t.scientific for t in soundscapes.taxa],
        "common_names": [t.common for t in soundscapes.taxa],
        "facts": soundscapes.facts,
        **(
            {
                "labels": soundscapes.labels.tolist(),
                "recordings": [str(c.path.name) for c in soundscapes.segments],
            }
            if cfg.per_item
            else {}
        ),
        "methods": results,
    }


def resolve_data(
    cfg: EvaluateConfig,
) -> tuple[datasets.QuerySet | None, datasets.SoundscapeSet | None, dict[str, str]]:
    """The query set, soundscape set and default model specs a configuration names."""
    defaults = {"teacher": DEFAULT_TEACHER, "student": DEFAULT_STUDENT}
    queries = soundscapes = None
    kind, _, arg = cfg.dataset.partition(":")
    if kind not in ("ssw60", "manifest", "none") and (bundle := data_set(cfg.dataset)) is not None:
        queries, bundle_soundscapes = datasets.load_bundle(bundle, cfg.split)
        defaults.update(bundle.models)
        defaults.update(train_manifest=str(bundle.train_manifest), taxa=str(bundle.taxa))
        if cfg.soundscapes in (None, kind, cfg.dataset):
            soundscapes = bundle_soundscapes
    elif kind == "ssw60":
        if not arg:
            raise ConfigError("--dataset ssw60:DIR needs the SSW60 folder")
        queries = datasets.load_ssw60(arg, cfg.split, cfg.image_sources)
    elif kind == "manifest":
        queries = datasets.load_query_manifest(arg, cfg.taxa, cfg.split)
        defaults["train_manifest"] = arg  # its train and val rows teach the controls; its test rows query
    elif kind != "none":
        raise ConfigError(
            f"unknown data set {cfg.dataset!r}: use ssw60:DIR, manifest:PATH, none or a registered one; "
            f"{DATA_SETS.known()}"
        )
    if cfg.soundscapes and soundscapes is None:
        soundscapes = soundscapes_of(cfg)
    if queries is None and soundscapes is None:
        raise ConfigError("nothing to evaluate: give --dataset and/or --soundscapes")
    return queries, soundscapes, defaults


def soundscapes_of(cfg: EvaluateConfig) -> datasets.SoundscapeSet:
    """``--soundscapes``: a registered data set's soundscapes (``toy``), else a BirdSet-style folder."""
    bundle = data_set(cfg.soundscapes or "")
    if bundle is None:
        return datasets.load_soundscape_dir(cfg.soundscapes, cfg.taxa, cfg.segment_s)
    soundscapes = datasets.load_bundle(bundle, "test")[1]
    if soundscapes is None:
        raise ConfigError(f"data set {cfg.soundscapes!r} has no soundscapes: pass a soundscape folder")
    return soundscapes


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Run the whole evaluation; returns the report (and writes it to ``cfg.out`` when set)."""
    from birdsearch.model.evaluate import gallery as gallery_module
    from birdsearch.model.evaluate import report

    started = time.time()
    queries, soundscapes, defaults = resolve_data(cfg)
    cfg = with_control_data(cfg, defaults)
    teacher_spec = cfg.teacher or defaults["teacher"]
    student_spec = cfg.student or defaults["student"]
    gallery_manifest = cfg.gallery or (
        str(queries.gallery_manifest) if queries and queries.gallery_manifest else None
    )
    if queries is not None and not cfg.index and not gallery_manifest and cfg.dataset.startswith("ssw60"):
        raise ConfigError(
            "SSW60 needs a gallery: --index ROOT (from 'birdsearch index' over the exported gallery manifest) "
            "or --gallery MANIFEST"
        )
    models = load_models(
        cfg, teacher_spec, student_spec, need_teacher=bool(queries and not cfg.index and gallery_manifest)
    )
    gallery = None
    if queries is not None and cfg.index:
        gallery = gallery_module.from_index(cfg.index)
        check_teacher(gallery, teacher_spec)
    elif queries is not None and gallery_manifest:
        gallery = gallery_module.from_manifest(gallery_manifest, models.teacher)
    result: dict[str, Any] = {
        "config": {**asdict(cfg), "teacher": teacher_spec, "student": student_spec},
        "models": {
            "student": models.student.describe(),
            "encoders": {
                name: {"path": str(e.path), "card": asdict(e.card)} for name, e in models.encoders.items()
            },
        },
    }
    if queries is not None:
        result["queries"] = evaluate_queries(cfg, queries, gallery, models)
    if soundscapes is not None:
        result["soundscapes"] = evaluate_soundscapes(cfg, soundscapes, models)
    result["seconds"] = round(time.time() - started, 1)
    if cfg.out:
        report.write(result, Path(cfg.out), plots=cfg.plots)
    return result


def with_control_data(cfg: EvaluateConfig, defaults: dict[str, str]) -> EvaluateConfig:
    """The controls' training manifest (and species table) from the data set when not given.

    Without one, the default method list leaves the controls out (said in the log); a list that
    names them explicitly fails in ``fit_controls`` with the fix.
    """
    if cfg.train_manifest is None and "train_manifest" in defaults:
        return replace(cfg, train_manifest=defaults["train_manifest"], taxa=cfg.taxa or defaults.get("taxa"))
    if cfg.train_manifest is None and tuple(cfg.methods) == DEFAULT_METHODS:
        log.warning(
            "no --train-manifest: the supervised controls (%s) are left out", ", ".join(CONTROL_METHODS)
        )
        return replace(cfg, methods=tuple(m for m in cfg.methods if m not in CONTROL_METHODS))
    return cfg


def check_teacher(gallery: GalleryVectors, teacher_spec: str) -> None:
    """Warn when the index was built by another teacher than the one the queries are compared in."""
    _, sha = weights_checksum(teacher_spec, "teacher")
    built_with = (gallery.facts.get("teacher") or {}).get("weights_sha256")
    if built_with and built_with != sha:
        log.warning(
            "the index was built with teacher weights %s..., the evaluation uses %s (%s...): scores are not comparable",
            built_with[:12], teacher_spec, sha[:12],
        )  # fmt: skip
