"""The stages that build a toy world: taxonomy, photos, recordings, then the models and their metrics.

Each stage is a function ``(world, progress) -> facts`` with the list of paths it owns
(``STAGE_OUTPUTS``), which ``world.run_stage`` clears before building so that a half-built stage
is never reused. Every photo and recording is drawn from a generator seeded by (world seed, split,
species, index), so that the bytes do not depend on the order or the process that made them.
"""

from __future__ import annotations

import csv
import functools
import logging
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from birdsearch.toy.calls import SAMPLE_RATE, NoiseBank, recording, soundscape
from birdsearch.toy.images import draw_photo
from birdsearch.toy.parallel import call, idle_cores, ordered_map
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
# (extension, libsndfile subtype, sample rate, channels) of the recordings, in a cycle of 20 over
# them. Mostly Ogg Vorbis at 48 kHz, as BirdSet and xeno-canto ship compressed audio: 16-bit FLAC
# of a broadband noise floor costs 7x the bytes (a world's audio would fill about 1 GB). One in 20
# each exercises MP3 at 44.1 kHz, lossless FLAC, WAV at SSW60's 22.05 kHz, and downmixing (stereo).
AUDIO_FORMAT_CYCLE = (
    ("mp3", "MPEG_LAYER_III", 44_100, 1),
    ("flac", "PCM_16", 48_000, 1),
    ("wav", "PCM_16", 22_050, 1),
    ("ogg", "VORBIS", 48_000, 2),
    *[("ogg", "VORBIS", 48_000, 1)] * 16,
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


def write_photo(world: ToyWorld, split: str, folder: Path, species: ToySpecies, i: int) -> Path:
    """Draw and save one photo; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{species.slug}_{split}_{i:04d}.jpg"
    photo = draw_photo(species, item_rng(world, split, species.label, i), world.config.photo_size)
    photo.save(path, format="JPEG", quality=90)
    return path


def build_photos(
    world: ToyWorld, split: str, folder: Path, manifest: Path, count: int, progress: bool
) -> dict[str, Any]:
    """``count`` JPEG photos per species of ``split`` in a folder per species, and their manifest."""
    jobs = [
        (write_photo, (world, split, folder / species.slug, species, i))
        for species in world.species
        for i in range(count)
    ]
    paths = ordered_map(call, jobs, idle_cores())
    bar = tqdm(paths, total=len(jobs), desc="toy photos", unit="img", disable=not progress)
    rows = [
        photo_row(world, path, species) for (_, (_, _, _, species, _)), path in zip(jobs, bar, strict=True)
    ]
    write_csv(manifest, PHOTO_COLUMNS, rows)
    return {"photos": len(jobs)}


def build_gallery(world: ToyWorld, progress: bool) -> dict[str, Any]:
    """The gallery photos: what the index holds and the answers show."""
    return build_photos(
        world, "gallery", world.gallery_dir, world.gallery_manifest, world.config.gallery_images, progress
    )


def build_teacher_photos(world: ToyWorld, progress: bool) -> dict[str, Any]:
    """The photos the teacher trains on: needed only to train it, not to install it."""
    return build_photos(
        world,
        "teacher_train",
        world.teacher_images_dir,
        world.teacher_images_manifest,
        world.config.teacher_images,
        progress,
    )


# --- recordings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioItem:
    """One recording to synthesise."""

    split: str  # "student_train", "distill" or "query"
    species: ToySpecies
    index: int  # within the species and split
    subset: str = ""  # "train" or "val" for distillation recordings
    position: int = 0  # in the world's list of recordings (``audio_items``): picks the file format


def audio_items(world: ToyWorld) -> list[AudioItem]:
    c = world.config
    items = []
    for sp in world.species:
        items += [AudioItem("student_train", sp, i) for i in range(c.student_recordings)]
        items += [AudioItem("distill", sp, i, "train") for i in range(c.distill_train)]
        items += [AudioItem("distill", sp, c.distill_train + i, "val") for i in range(c.distill_val)]
        items += [AudioItem("query", sp, i) for i in range(c.query_recordings)]
    return [replace(item, position=position) for position, item in enumerate(items)]


def file_format(item: AudioItem) -> tuple[str, str, int, int]:
    """The item's place in ``AUDIO_FORMAT_CYCLE``: every world of 20 recordings or more has every format."""
    return AUDIO_FORMAT_CYCLE[item.position % len(AUDIO_FORMAT_CYCLE)]


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


def write_recording(world: ToyWorld, item: AudioItem, folder: Path | None = None) -> tuple[Path, float]:
    """Synthesise and save one recording (in ``folder``, else its split's); returns its path and duration."""
    import soundfile as sf

    rng = item_rng(world, item.split, item.species.label, item.index)
    duration = recording_length(world.config, rng)
    samples = recording(item.species.song, duration, rng, noise_bank(world.config.seed))
    extension, subtype, rate, channels = file_format(item)
    folder = folder or world.audio_dir / item.split / item.species.slug
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{item.species.slug}_{item.split}_{item.index:04d}.{extension}"
    sf.write(path, to_file_layout(samples, rate, channels, rng), rate, subtype=subtype)
    if extension == "ogg":
        fix_ogg_serial(path, item.position + 1)
    return path, len(samples) / SAMPLE_RATE


# Ogg's page checksum is CRC-32 without bit reflection; zlib's is reflected, so bytes are mirrored in.
_MIRROR = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def ogg_crc(page: bytes) -> int:
    """An Ogg page's CRC-32 (polynomial 0x04c11db7, no reflection, no initial or final xor)."""
    crc = zlib.crc32(page.translate(_MIRROR), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{crc:032b}"[::-1], 2)


def fix_ogg_serial(path: Path, serial: int) -> None:
    """Give every page of an Ogg file the stream serial ``serial`` (libsndfile draws one at random).

    Without it a world's Ogg files would differ from build to build in four bytes per page (and
    their checksums), though not in a single sample.
    """
    data = bytearray(path.read_bytes())
    position = 0
    while position < len(data):
        if data[position : position + 4] != b"OggS":
            raise ValueError(f"{path}: no Ogg page at byte {position}")
        segments = data[position + 26]
        size = 27 + segments + sum(data[position + 27 : position + 27 + segments])
        data[position + 14 : position + 18] = serial.to_bytes(4, "little")
        data[position + 22 : position + 26] = bytes(4)
        crc = ogg_crc(bytes(data[position : position + size]))
        data[position + 22 : position + 26] = crc.to_bytes(4, "little")
        position += size
    path.write_bytes(bytes(data))


@functools.cache
def noise_bank(seed: int) -> NoiseBank:
    """The world's background noise tracks, made once per process (each worker makes its own)."""
    return NoiseBank(seed)


def distill_rows(path: Path, item: AudioItem, duration: float) -> list[list[Any]]:
    """One manifest row per recording; a long one is given as two segments (start, end) instead."""
    name = item.species.scientific
    if duration <= 15.0:
        return [[path, name, item.subset, "", ""]]
    half = round(duration / 2, 3)
    return [[path, name, item.subset, 0.0, half], [path, name, item.subset, half, round(duration, 3)]]


def build_audio(world: ToyWorld, progress: bool) -> dict[str, Any]:
    """Distillation and query recordings, soundscapes, and their manifests."""
    facts = write_recordings(world, ("distill", "query"), progress)
    build_soundscapes(world, noise_bank(world.config.seed), progress)
    return facts


def build_examples(world: ToyWorld, progress: bool) -> dict[str, Any]:
    """The first query recording of each species, byte for byte, in one folder: a first answer needs
    something to query with, and drawing them all takes far longer."""
    items = [item for item in audio_items(world) if item.split == "query" and item.index == 0]
    jobs = [(write_recording, (world, item, world.examples_dir)) for item in items]
    # Few but slow items (a quarter second each): worth a second process from 8 of them on.
    return {"examples": len(list(ordered_map(call, jobs, idle_cores(), min_items=8)))}


def build_student_audio(world: ToyWorld, progress: bool) -> dict[str, Any]:
    """The student's training recordings: needed only to train the students, not to install them."""
    return write_recordings(world, ("student_train",), progress)


def write_recordings(world: ToyWorld, splits: tuple[str, ...], progress: bool) -> dict[str, Any]:
    """The recordings of ``splits`` and their manifests, side by side on the idle cores."""
    rows: dict[str, list[list[Any]]] = {split: [] for split in splits}
    seconds = 0.0
    items = [item for item in audio_items(world) if item.split in splits]
    written = ordered_map(call, [(write_recording, (world, item)) for item in items], idle_cores())
    bar = tqdm(written, total=len(items), desc="toy recordings", unit="rec", disable=not progress)
    for item, (path, duration) in zip(items, bar, strict=True):
        seconds += duration
        if item.split == "distill":
            rows["distill"] += distill_rows(path, item, duration)
        else:
            rows[item.split].append([path, item.species.scientific])
    manifests = {
        "student_train": (world.student_manifest, ("path", "species")),
        "distill": (world.distill_manifest, ("path", "species", "split", "start", "end")),
        "query": (world.query_manifest, ("path", "species")),
    }
    for split in splits:
        write_csv(manifests[split][0], manifests[split][1], rows[split])
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
    "gallery": build_gallery,
    "teacher-photos": build_teacher_photos,
    "examples": build_examples,
    "audio": build_audio,
    "student-audio": build_student_audio,
    "teacher": build_teacher,
    "student-realistic": student_builder("realistic"),
    "student-perfect": student_builder("perfect"),
    "metrics": build_metrics,
}
STAGE_OUTPUTS: dict[str, Callable[[ToyWorld], list[Path]]] = {
    "taxonomy": lambda w: [w.taxa_csv],
    "gallery": lambda w: [w.gallery_dir, w.gallery_manifest],
    "teacher-photos": lambda w: [w.teacher_images_dir, w.teacher_images_manifest],
    "examples": lambda w: [w.examples_dir],
    "audio": lambda w: [
        w.audio_dir / "distill",
        w.audio_dir / "query",
        w.soundscape_dir,
        w.distill_manifest,
        w.query_manifest,
        w.soundscape_annotations,
    ],  # fmt: skip
    "student-audio": lambda w: [w.audio_dir / "student_train", w.student_manifest],
    "teacher": lambda w: [w.teacher_dir],
    "student-realistic": lambda w: [w.student_dir_for("realistic")],
    "student-perfect": lambda w: [w.student_dir_for("perfect")],
    "metrics": lambda w: [w.metrics_json],
}
