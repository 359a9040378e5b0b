"""The stages that build a toy world: taxonomy, photos, recordings, then the models and their metrics.

Each stage is a function ``(world, progress) -> facts`` with the list of paths it owns
(``STAGE_OUTPUTS``), which ``world.run_stage`` clears before building so that a half-built stage
is never reused. Every photo and recording is drawn from a generator seeded by (world seed, split,
species, index), so that the bytes do not depend on the order or the process that made them.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from birdsearch.toy.calls import SAMPLE_RATE, NoiseBank, recording, soundscape
from birdsearch.toy.images import draw_photo
from birdsearch.toy.taxonomy import ToySpecies, write_taxa_csv

# Annotations only: the world imports the builders, so a runtime import would close a circle.
if TYPE_CHECKING:
    from birdsearch.toy.world import ToyWorld

log = logging.getLogger(__name__)

# Seeds of the independent random streams, one per split.
SPLIT_SEEDS = {
    "teacher_train": 11, "gallery": 12, "student_train": 21, "distill": 22, "query": 23, "soundscape": 24,
}  # fmt: skip
LICENSE = "CC0-1.0"
ATTRIBUTION = "birdsearch toy world (synthetic, procedurally drawn)"
# (share of recordings, container, sample rate, channels): most like field recorders, the rest
# exercise resampling (22.05 kHz like SSW60, 44.1 kHz) and downmixing (stereo).
AUDIO_FORMATS = (
    (0.6, "flac", 48_000, 1),
    (0.15, "wav", 22_050, 1),
    (0.15, "flac", 44_100, 2),
    (0.1, "wav", 48_000, 2),
)


def item_rng(world: ToyWorld, split: str, *index: int) -> np.random.Generator:
    return np.random.default_rng([world.config.seed, SPLIT_SEEDS[split], *index])


def write_csv(path: Path, header: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(list(header))
        writer.writerows(rows)


# --- taxonomy --------------------------------------------------------------------------------


def build_taxonomy(world: ToyWorld, progress: bool) -> dict[str, Any]:
    write_taxa_csv(world.species, world.taxa_csv)
    return {"species": len(world.species)}


# --- photos ----------------------------------------------------------------------------------

PHOTO_COLUMNS = ("path", "species", "common_name", "genus", "family", "order", "license", "attribution", "source")  # fmt: skip


def photo_row(world: ToyWorld, path: Path, species: ToySpecies) -> list[str]:
    t = species.taxon
    source = f"toy:{world.config.data_key()}"
    return [str(path), t.scientific, t.common, t.genus, t.family, t.order, LICENSE, ATTRIBUTION, source]


def build_images(world: ToyWorld, progress: bool) -> dict[str, Any]:
    """Teacher-training photos and the gallery: JPEG files in a folder per species, plus manifests."""
    splits = (
        (
            "teacher_train",
            world.teacher_images_dir,
            world.teacher_images_manifest,
            world.config.teacher_images,
        ),
        ("gallery", world.gallery_dir, world.gallery_manifest, world.config.gallery_images),
    )
    total = sum(count for *_, count in splits) * len(world.species)
    bar = tqdm(total=total, desc="toy photos", unit="img", disable=not progress)
    for split, directory, manifest, count in splits:
        rows = []
        for species in world.species:
            folder = directory / species.slug
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                path = folder / f"{species.slug}_{split}_{i:04d}.jpg"
                photo = draw_photo(species, item_rng(world, split, species.label, i), world.config.photo_size)
                photo.save(path, format="JPEG", quality=90)
                rows.append(photo_row(world, path, species))
                bar.update()
        write_csv(manifest, PHOTO_COLUMNS, rows)
    bar.close()
    return {"photos": total}


# --- recordings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioItem:
    """One recording to synthesise."""

    split: str  # "student_train", "distill" or "query"
    species: ToySpecies
    index: int  # within the species and split
    subset: str = ""  # "train" or "val" for distillation recordings


def audio_items(world: ToyWorld) -> list[AudioItem]:
    c = world.config
    items = []
    for sp in world.species:
        items += [AudioItem("student_train", sp, i) for i in range(c.student_recordings)]
        items += [AudioItem("distill", sp, i, "train") for i in range(c.distill_train)]
        items += [AudioItem("distill", sp, c.distill_train + i, "val") for i in range(c.distill_val)]
        items += [AudioItem("query", sp, i) for i in range(c.query_recordings)]
    return items


def choose_format(rng: np.random.Generator) -> tuple[str, int, int]:
    draw, cumulative = rng.random(), 0.0
    for share, container, rate, channels in AUDIO_FORMATS:
        cumulative += share
        if draw < cumulative:
            return container, rate, channels
    return AUDIO_FORMATS[0][1:]


def to_file_layout(samples: np.ndarray, rate: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """48 kHz mono samples to ``rate`` and ``channels`` (a stereo pair differs in delay and gain)."""
    if rate != SAMPLE_RATE:
        import soxr

        samples = soxr.resample(samples, SAMPLE_RATE, rate, quality="HQ").astype(np.float32)
    if channels == 1:
        return samples
    delay = int(rng.integers(0, 24))
    right = np.concatenate([np.zeros(delay, np.float32), samples[: len(samples) - delay]])
    return np.stack([samples, right * rng.uniform(0.7, 1.0)], axis=1)


def recording_length(config: Any, rng: np.random.Generator) -> float:
    """Seconds: a share ``short_fraction`` shorter than a 10 s window (log-uniform), the rest longer."""
    low, high = config.recording_s
    if rng.random() < config.short_fraction:
        return float(np.exp(rng.uniform(np.log(low), np.log(min(10.0, high)))))
    return float(rng.uniform(min(10.0, high), high))


def write_recording(world: ToyWorld, item: AudioItem, noise: NoiseBank) -> tuple[Path, float]:
    """Synthesise and save one recording; returns its path and duration."""
    import soundfile as sf

    rng = item_rng(world, item.split, item.species.label, item.index)
    duration = recording_length(world.config, rng)
    samples = recording(item.species.song, duration, rng, noise)
    container, rate, channels = choose_format(rng)
    folder = world.audio_dir / item.split / item.species.slug
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{item.species.slug}_{item.split}_{item.index:04d}.{container}"
    sf.write(path, to_file_layout(samples, rate, channels, rng), rate, subtype="PCM_16")
    return path, len(samples) / SAMPLE_RATE


def distill_rows(path: Path, item: AudioItem, duration: float) -> list[list[Any]]:
    """One manifest row per recording; a long one is given as two segments (start, end) instead."""
    name = item.species.scientific
    if duration <= 15.0:
        return [[path, name, item.subset, "", ""]]
    half = round(duration / 2, 3)
    return [[path, name, item.subset, 0.0, half], [path, name, item.subset, half, round(duration, 3)]]


def build_audio(world: ToyWorld, progress: bool) -> dict[str, Any]:
    """Student-training, distillation and query recordings, soundscapes, and their manifests."""
    noise = NoiseBank(world.config.seed)
    rows: dict[str, list[list[Any]]] = {"student_train": [], "distill": [], "query": []}
    seconds = 0.0
    for item in tqdm(audio_items(world), desc="toy recordings", unit="rec", disable=not progress):
        path, duration = write_recording(world, item, noise)
        seconds += duration
        if item.split == "distill":
            rows["distill"] += distill_rows(path, item, duration)
        else:
            rows[item.split].append([path, item.species.scientific])
    write_csv(world.student_manifest, ("path", "species"), rows["student_train"])
    write_csv(world.distill_manifest, ("path", "species", "split", "start", "end"), rows["distill"])
    write_csv(world.query_manifest, ("path", "species"), rows["query"])
    build_soundscapes(world, noise, progress)
    return {"recordings": sum(len(r) for r in rows.values()), "audio_seconds": round(seconds, 1)}


def build_soundscapes(world: ToyWorld, noise: NoiseBank, progress: bool) -> None:
    """Soundscapes of 3–6 species each, at 32 kHz, with one annotation row per calling bout."""
    import soundfile as sf
    import soxr

    world.soundscape_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    low, high = world.config.soundscape_s
    for i in tqdm(range(world.config.soundscapes), desc="toy soundscapes", disable=not progress):
        rng = item_rng(world, "soundscape", i)
        count = int(rng.integers(3, min(6, len(world.species)) + 1))
        chosen = [world.species[j] for j in rng.choice(len(world.species), count, replace=False)]
        mixture, events = soundscape([sp.song for sp in chosen], rng.uniform(low, high), rng, noise)
        path = world.soundscape_dir / f"soundscape_{i:03d}.flac"
        rate = world.config.soundscape_rate
        sf.write(path, soxr.resample(mixture, SAMPLE_RATE, rate, quality="HQ"), rate, subtype="PCM_16")
        rows += [[path, round(e.start_s, 3), round(e.end_s, 3), chosen[k].scientific] for k, e in events]
    write_csv(world.soundscape_annotations, ("file", "start_s", "end_s", "species"), rows)


# --- models ----------------------------------------------------------------------------------


def build_teacher(world: ToyWorld, progress: bool) -> dict[str, Any]:
    from birdsearch.toy.teacher_model import train_teacher
    from birdsearch.toy.training import torch_threads, training_threads

    threads = training_threads()
    with torch_threads(threads):
        return {**train_teacher(world, progress), "threads": threads}


def student_builder(variant: str) -> Callable[[ToyWorld, bool], dict[str, Any]]:
    def build(world: ToyWorld, progress: bool) -> dict[str, Any]:
        from birdsearch.toy.student_model import train_student
        from birdsearch.toy.training import torch_threads, training_threads

        threads = training_threads()
        with torch_threads(threads):
            return {**train_student(world, variant, progress), "threads": threads}

    return build


def build_metrics(world: ToyWorld, progress: bool) -> dict[str, Any]:
    import json

    from birdsearch.toy.metrics import measure_world
    from birdsearch.toy.training import torch_threads, training_threads

    with torch_threads(training_threads()):
        metrics = measure_world(world)
    world.metrics_json.write_text(json.dumps(metrics, indent=1))
    return {}


STAGE_BUILDERS: dict[str, Callable[[ToyWorld, bool], dict[str, Any] | None]] = {
    "taxonomy": build_taxonomy,
    "images": build_images,
    "audio": build_audio,
    "teacher": build_teacher,
    "student-realistic": student_builder("realistic"),
    "student-perfect": student_builder("perfect"),
    "metrics": build_metrics,
}
STAGE_OUTPUTS: dict[str, Callable[[ToyWorld], list[Path]]] = {
    "taxonomy": lambda w: [w.taxa_csv],
    "images": lambda w: [w.root / "images", w.gallery_dir, w.teacher_images_manifest, w.gallery_manifest],
    "audio": lambda w: [
        w.audio_dir,
        w.soundscape_dir,
        w.student_manifest,
        w.distill_manifest,
        w.query_manifest,
        w.soundscape_annotations,
    ],  # fmt: skip
    "teacher": lambda w: [w.teacher_dir],
    "student-realistic": lambda w: [w.student_dir_for("realistic")],
    "student-perfect": lambda w: [w.student_dir_for("perfect")],
    "metrics": lambda w: [w.metrics_json],
}
