"""Photo-count bias: species top-1 and mAP on a deliberately unbalanced gallery, under each species rule.

The service ranks species from each window's nearest photos (``birdsearch.engine.ranking``). With
the ``best`` rule a species scores its best photo, so a species with many photos has more chances
of a high maximum and wins more often. This study measures that and chooses a rule that pools photos:

1. The toy world's gallery is topped up to ``--max-photos`` photos per species (new photos drawn by
   the world's own gallery generator: the photos a larger ``gallery_images`` would have drawn) and indexed once with ``birdsearch index``.
2. Each draw (``--draws``, seeded) keeps 1 to ``--max-photos`` photos per species, uniformly at random.
3. Every recording is windowed and embedded as the service does (one vector per window), by the
   distilled encoder and by the zero-shot cascade; each window's ``--candidates`` nearest kept
   photos are ranked into species by every rule in ``RULES``, and the recording's species by the
   best window, as ``POST /query`` does.
4. Per draw: species top-1 and mAP (per query, averaged per species, then over species), and the
   Pearson correlation between a species' photo count and its top-1 recall (over species and draws).

The rule is chosen on the distillation's validation recordings (``distill.csv`` rows of split
``val``): highest species mAP averaged over both query methods and all draws (ties: top-1, then the
simpler rule, earlier in ``RULES``). The held-out query recordings are scored only to report the
chosen rule against ``best``; they choose nothing.

    python bench/photo_count_bias.py                     # small preset, 16 draws
    python bench/photo_count_bias.py --preset default --draws 4 --json out.json
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

log = logging.getLogger("photo_count_bias")

RULES = (
    "best",
    "mean-top:2",
    "mean-top:3",
    "mean-top:4",
    "mean-top:5",
    "kth:0.25",
    "kth:0.5",
    "lme:0.01",
    "lme:0.02",
    "lme:0.05",
    "lme:0.1",
    "lme:0.2",
    "lme:0.5",
    "prototype",
)
METHODS = ("distilled", "cascade-soft")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small", help="toy world preset: small (default), default")
    parser.add_argument(
        "--draws", type=int, default=16, help="random unbalanced galleries (default: %(default)s)"
    )
    parser.add_argument("--max-photos", type=int, default=12, help="photos per species at most (default: 12)")
    parser.add_argument(
        "--candidates", type=int, default=200, help="photos searched per window (service default)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws")
    parser.add_argument("--json", type=Path, help="write every figure here")
    return parser.parse_args()


def pooled_gallery(world: Any, max_photos: int, folder: Path) -> Path:
    """A manifest with ``max_photos`` photos per species: the world's gallery, topped up."""
    from birdsearch.toy.build import PHOTO_COLUMNS, photo_row, write_csv, write_photo

    manifest = folder / "gallery.csv"
    if manifest.is_file():
        return manifest
    folder.mkdir(parents=True, exist_ok=True)  # a gallery already full (the default preset) writes no photo
    with open(world.gallery_manifest, newline="") as f:
        existing = list(csv.DictReader(f))
    rows = []
    for species in world.species:
        own = [r for r in existing if r["species"] == species.taxon.scientific][:max_photos]
        rows += [[r[c] for c in PHOTO_COLUMNS] for r in own]
        for i in range(len(own), max_photos):
            path = write_photo(world, "gallery", folder / "photos" / species.slug, species, i)
            rows.append(photo_row(world, path, species))
    write_csv(manifest, PHOTO_COLUMNS, rows)
    return manifest


def indexed_gallery(world: Any, folder: Path, max_photos: int) -> tuple[np.ndarray, list[str]]:
    """The pooled gallery indexed with ``birdsearch index``: (N, D) unit vectors and species names."""
    from birdsearch.indexer.pipeline import IndexConfig, run_index
    from birdsearch.indexer.store import IndexRoot
    from birdsearch.model.evaluate.gallery import from_index

    manifest = pooled_gallery(world, max_photos, folder)
    root = folder / "index"
    if not IndexRoot(root).current_name():
        run_index(IndexConfig(gallery=manifest, out=root, teacher=world.teacher_spec, device="cpu"))
    gallery = from_index(root)
    return gallery.vectors, gallery.species


def query_methods(world: Any, preset: str, taxa: list[Any]) -> dict[str, Any]:
    """The distilled encoder (the demo's, distilled on first use) and the soft cascade, as embedders."""
    from birdsearch.model.evaluate.run import EvaluateConfig, build_methods, load_models
    from birdsearch.toy.cli import distil

    args = argparse.Namespace(rebuild=False, device="cpu")
    encoder = distil(world, world.student_spec, world.root / "demo" / "encoder-realistic", args)
    cfg = EvaluateConfig(
        dataset=f"toy:{preset}", encoders=[f"distilled={encoder}"], methods=("cascade-soft",), snap=False,
        teacher=world.teacher_spec, student=world.student_spec, device="cpu",
    )  # fmt: skip
    models = load_models(cfg, world.teacher_spec, world.student_spec, need_teacher=False)
    methods, _ = build_methods(cfg, models, taxa)
    return {"embedders": {m.name: m.embedder for m in methods}, "front_end": models.student.front_end_config}


def window_vectors(clips: list[Any], methods: dict[str, Any]) -> dict[str, list[np.ndarray]]:
    """Per method, each recording's (W, D) unit window vectors, as the service searches them."""
    from birdsearch.model.distill.data import windows_of

    out: dict[str, list[np.ndarray]] = {name: [] for name in methods["embedders"]}
    for clip in clips:
        windows = windows_of(clip, methods["front_end"])
        for name, embedder in methods["embedders"].items():
            v = embedder.embed_windows(windows).float().numpy()
            out[name].append(v / np.linalg.norm(v, axis=1, keepdims=True))
    return out


def draw_gallery(labels: np.ndarray, n_species: int, max_photos: int, rng: np.random.Generator) -> np.ndarray:
    """Image rows kept in one draw: 1 to ``max_photos`` photos of each species, chosen at random."""
    kept = []
    for s in range(n_species):
        rows = np.flatnonzero(labels == s)
        count = int(rng.integers(1, min(max_photos, len(rows)) + 1))
        kept.append(rng.choice(rows, count, replace=False))
    return np.sort(np.concatenate(kept))


def recording_ranking(
    vectors: np.ndarray,
    gallery: np.ndarray,
    species_of: np.ndarray,
    n_species: int,
    rule: str,
    candidates: int,
) -> np.ndarray:
    """The service's species ranking of one recording (rows, best first) under ``rule``."""
    from birdsearch.engine import ranking

    sims = vectors @ gallery.T
    if rule == "prototype":  # the similarity to each species' mean photo embedding
        means = np.stack([gallery[species_of == s].mean(axis=0) for s in range(n_species)])
        per_window = (vectors @ (means / np.linalg.norm(means, axis=1, keepdims=True)).T).astype(np.float32)
        scores = ranking.from_per_window(per_window).recording
    else:
        c = min(candidates, gallery.shape[0])
        ids = np.argsort(-sims, axis=1, kind="stable")[:, :c]
        top = np.take_along_axis(sims, ids, axis=1)
        scores = ranking.species_scores(top, ids, species_of, n_species, rule).recording
    return ranking.top_species(scores, n_species)


def species_means(values: np.ndarray, labels: np.ndarray, n_species: int) -> np.ndarray:
    """Per-species mean of per-query values (NaN for a species without queries)."""
    sums = np.bincount(labels, weights=values, minlength=n_species)
    counts = np.bincount(labels, minlength=n_species)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def score_draw(
    vectors: list[np.ndarray], labels: np.ndarray, gallery: np.ndarray, species_of: np.ndarray,
    n_species: int, rule: str, candidates: int,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per-species top-1 and mAP of one rule on one gallery draw (one relevant species per query)."""
    hit, ap = [], []
    for v, y in zip(vectors, labels, strict=True):
        order = recording_ranking(v, gallery, species_of, n_species, rule, candidates)
        position = int(np.flatnonzero(order == y)[0]) if (order == y).any() else n_species
        hit.append(float(position == 0))
        ap.append(1.0 / (position + 1))
    return species_means(np.array(hit), labels, n_species), species_means(np.array(ap), labels, n_species)


def study(split_data: dict[str, Any], draws: list[np.ndarray], labels_g: np.ndarray, vectors_g: np.ndarray,
          n_species: int, candidates: int) -> dict[str, Any]:  # fmt: skip
    """Every rule x method on one split: mean top-1, mAP, count-recall correlation, small/large top-1."""
    out: dict[str, Any] = {}
    for method, vectors in split_data["vectors"].items():
        for rule in RULES:
            top1s, maps, counts = [], [], []
            for kept in draws:
                t1, ap = score_draw(
                    vectors,
                    split_data["labels"],
                    vectors_g[kept],
                    labels_g[kept],
                    n_species,
                    rule,
                    candidates,
                )
                top1s.append(t1)
                maps.append(ap)
                counts.append(np.bincount(labels_g[kept], minlength=n_species))
            t1, ap, n = np.array(top1s), np.array(maps), np.array(counts)
            have = ~np.isnan(t1)
            out[f"{method}|{rule}"] = {
                "top1": float(np.nanmean(t1)),
                "mAP": float(np.nanmean(ap)),
                "corr_count_top1": float(np.corrcoef(n[have], t1[have])[0, 1]),
                "top1_le4_photos": float(np.nanmean(np.where(n <= 4, t1, np.nan))),
                "top1_ge9_photos": float(np.nanmean(np.where(n >= 9, t1, np.nan))),
            }
    return out


def choose(val: dict[str, Any]) -> str:
    """The rule with the best validation species mAP averaged over methods (ties: top-1, then order)."""

    def key(rule: str) -> tuple[float, float, int]:
        rows = [val[f"{m}|{rule}"] for m in METHODS]
        return (round(np.mean([r["mAP"] for r in rows]), 6), round(np.mean([r["top1"] for r in rows]), 6),
                -RULES.index(rule))  # fmt: skip

    return max(RULES, key=key)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args()
    from birdsearch.model.evaluate.datasets import load_data_set
    from birdsearch.toy import plugin
    from birdsearch.toy.world import ensure_world

    plugin.register()  # the toy world's model specs and data sets

    began = time.perf_counter()
    world = ensure_world(args.preset)
    folder = world.root / f"bench-photo-count-{args.max_photos}"
    vectors_g, names_g = indexed_gallery(world, folder, args.max_photos)
    splits = {
        name: load_data_set(f"toy:{args.preset}", split=name, progress=False)[0] for name in ("val", "test")
    }
    taxa = splits["test"].taxa
    row_of = {t.scientific: i for i, t in enumerate(taxa)}
    labels_g = np.array([row_of.get(n, -1) for n in names_g])
    methods = query_methods(world, args.preset, taxa)
    data = {
        name: {"labels": np.array([c.species for c in q.clips]), "vectors": window_vectors(q.clips, methods)}
        for name, q in splits.items()
    }
    rng = np.random.default_rng(args.seed)
    draws = [draw_gallery(labels_g, len(taxa), args.max_photos, rng) for _ in range(args.draws)]
    val = study(data["val"], draws, labels_g, vectors_g, len(taxa), args.candidates)
    chosen = choose(val)
    test = study(data["test"], draws, labels_g, vectors_g, len(taxa), args.candidates)
    report = {
        "preset": args.preset, "species": len(taxa), "draws": args.draws, "max_photos": args.max_photos,
        "val_recordings": len(data["val"]["labels"]), "query_recordings": len(data["test"]["labels"]),
        "chosen": chosen, "val": val, "test": test, "seconds": round(time.perf_counter() - began, 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }  # fmt: skip
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def print_report(report: dict[str, Any]) -> None:
    """Validation table of every rule, then the held-out table of best vs the chosen rule."""
    print(f"# {report['preset']} world, {report['species']} species, {report['draws']} draws of 1-"
          f"{report['max_photos']} photos per species, {report['seconds']} s")  # fmt: skip
    for split in ("val", "test"):
        rules = RULES if split == "val" else ("best", report["chosen"])
        n = report["val_recordings" if split == "val" else "query_recordings"]
        print(f"\n## {split} ({n} recordings)" + (f": chosen {report['chosen']}" if split == "val" else ""))
        print("| method | rule | top-1 | mAP | corr(count, top-1) | top-1 <=4 photos | top-1 >=9 photos |")
        print("|---|---|---|---|---|---|---|")
        for method in METHODS:
            for rule in rules:
                r = report[split][f"{method}|{rule}"]
                print(f"| {method} | {rule} | {r['top1']:.3f} | {r['mAP']:.3f} | {r['corr_count_top1']:+.2f} "
                      f"| {r['top1_le4_photos']:.3f} | {r['top1_ge9_photos']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
