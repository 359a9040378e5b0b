"""Helpers for the distillation and evaluation tests: tiny fast models and a world of synthetic tones.

Not a conftest (pytest does not load it); test files import it by path. The models are the real
classes in the real on-disk formats, made small: a CLAP student on 16 mel bins of 2 s windows at
16 kHz (a training step of 8 clips takes a few hundredths of a second) and the tiny open_clip teacher.
The "species" are tone patterns, one fundamental frequency each, easy enough that a few steps learn
something, with the taxa in a species table as a user would write it.
"""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from birdsearch.model import standins
from birdsearch.model.names import Taxon

SAMPLE_RATE = 16_000
WINDOW_S = 2
FEATURES = {
    "feature_size": 16,
    "sampling_rate": SAMPLE_RATE,
    "hop_length": 160,
    "max_length_s": WINDOW_S,
    "fft_window_size": 512,
    "frequency_min": 0,
    "frequency_max": 8_000,
    "truncation": "rand_trunc",
    "padding": "repeatpad",
}

TAXA = [
    Taxon("Tonus primus", "Red Tonebird", order="Passeriformes", family="Tonidae"),
    Taxon("Tonus secundus", "Blue Tonebird", order="Passeriformes", family="Tonidae"),
    Taxon("Sonus tertius", "Green Hummer", order="Apodiformes", family="Sonidae"),
    Taxon("Sonus quartus", "Yellow Hummer", order="Apodiformes", family="Sonidae"),
]
FREQUENCIES = [500.0, 1100.0, 2300.0, 4100.0]


def tiny_clap_config(projection_dim: int = 24, dropout: float = 0.1):
    from transformers import ClapConfig

    audio = {
        "patch_embeds_hidden_size": 16,
        "depths": [1, 1, 1],
        "num_attention_heads": [1, 2, 2],
        "hidden_size": 64,
        "window_size": 4,
        "num_mel_bins": 16,
        "spec_size": 64,
        "hidden_dropout_prob": dropout,
        "enable_fusion": False,
    }
    text = {"vocab_size": 400, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 64}  # fmt: skip
    return ClapConfig(text_config=text, audio_config=audio, projection_dim=projection_dim)


def save_tiny_student(directory: Path, seed: int = 0, dropout: float = 0.1) -> Path:
    captions = [f"Sound of a {t.common}" for t in TAXA]
    tokenizer = standins.train_bpe_tokenizer(captions, vocab_size=300)
    model = standins.build_student(tiny_clap_config(dropout=dropout), seed=seed)
    return standins.save_student(model, tokenizer, directory, features=FEATURES)


def save_tiny_teacher(directory: Path, seed: int = 0) -> Path:
    model = standins.build_teacher(standins.TINY_TEACHER_CFG, seed=seed)
    return standins.save_teacher(model, directory, standins.TINY_TEACHER_CFG)


def tone(frequency: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A chirping tone at ``frequency`` with random phase, onset and noise."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    vibrato = 1 + 0.02 * np.sin(2 * np.pi * rng.uniform(3, 8) * t)
    envelope = (np.sin(2 * np.pi * rng.uniform(1, 3) * t + rng.uniform(0, 6)) > -0.3).astype(float)
    signal = 0.4 * envelope * np.sin(2 * np.pi * frequency * vibrato * t + rng.uniform(0, 6))
    return (signal + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def write_tone_world(root: Path, clips_per_species: int = 6, seconds: float = 3.0, seed: int = 0) -> dict:
    """Recordings of each tone species, a manifest (train/val/test), a species table."""
    rng = np.random.default_rng(seed)
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rows = []
    for s, (taxon, freq) in enumerate(zip(TAXA, FREQUENCIES, strict=True)):
        for i in range(clips_per_species):
            path = audio / f"s{s}_{i}.wav"
            sf.write(path, tone(freq, seconds, rng), SAMPLE_RATE)
            split = "test" if i == clips_per_species - 1 else "val" if i == clips_per_species - 2 else "train"
            rows.append({"path": f"audio/{path.name}", "species": taxon.scientific, "split": split})
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "species", "split"])
        writer.writeheader()
        writer.writerows(rows)
    taxa = root / "taxa.csv"
    with taxa.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["scientific_name", "common_name", "order", "family"])
        for t in TAXA:
            writer.writerow([t.scientific, t.common, t.order, t.family])
    return {"manifest": manifest, "taxa": taxa, "root": root}


# ---- evaluation fixtures: photos, the SSW60 layout, a BirdSet-style soundscape collection ---------

COLOURS = [(200, 30, 30), (30, 30, 200), (30, 160, 30), (220, 200, 20)]
EBIRD_CODES = ["redton", "bluton", "grehum", "yelhum"]


def photo(species: int, rng: np.random.Generator, size: int = 48):
    """A blob of the species' colour on a noisy background."""
    from PIL import Image

    pixels = rng.integers(0, 80, size=(size, size, 3)).astype(np.uint8)
    c = rng.integers(size // 4, 3 * size // 4, size=2)
    yy, xx = np.mgrid[:size, :size]
    mask = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 < (size // 4) ** 2
    pixels[mask] = COLOURS[species]
    return Image.fromarray(pixels)


def write_gallery(root: Path, per_species: int = 3, seed: int = 0) -> Path:
    """Photos per tone species and a gallery manifest (path, species)."""
    rng = np.random.default_rng(seed)
    folder = root / "gallery"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for s, taxon in enumerate(TAXA):
        for i in range(per_species):
            path = folder / f"s{s}_{i}.jpg"
            photo(s, rng).save(path, quality=90)
            rows.append([str(path), taxon.scientific])
    manifest = root / "gallery.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "species"])
        writer.writerows(rows)
    return manifest


def write_ssw60(root: Path, audio_per_species: int = 3, images_per_species: int = 2, seed: int = 0) -> Path:
    """A small directory in SSW60's released layout (taxa.csv, audio_ml, images_nabirds, images_inat)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    with (root / "taxa.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "species_code", "inat_taxon_id", "inat2021_label", "nabirds_labels",
                         "common_name", "scientific_name", "family", "order"])  # fmt: skip
        for s, t in enumerate(TAXA):
            writer.writerow([s, EBIRD_CODES[s], 1000 + s, 3000 + s, f"{50 + s} {400 + s}", t.common, t.scientific,
                             f"{t.family} (Tone birds)", t.order])  # fmt: skip
    (root / "audio_ml").mkdir(exist_ok=True)
    with (root / "audio_ml.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["asset_id", "label", "split", "samplerate", "channels", "samples", "duration_seconds"]
        )
        for s in range(len(TAXA)):
            for i in range(audio_per_species):
                asset = 45516191 + 100 * s + i
                samples = tone(FREQUENCIES[s], 4.0, rng)
                resampled = soxr.resample(samples, SAMPLE_RATE, 22_050)
                sf.write(root / "audio_ml" / f"{asset}.wav", resampled, 22_050)
                split = "test" if i == audio_per_species - 1 else "train"
                writer.writerow([asset, s, split, 22_050, 1, len(resampled), len(resampled) / 22_050])
    for source, credit in (("nabirds", "photographer"), ("inat", "rights_holder")):
        folder = root / f"images_{source}"
        folder.mkdir(exist_ok=True)
        with (root / f"images_{source}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["asset_id", "label", "split", "height", "width", "channels", credit])
            for s in range(len(TAXA)):
                for i in range(images_per_species):
                    asset = f"{source}{s:02d}{i:02d}" if source == "nabirds" else 73542 + 10 * s + i
                    photo(s, rng).save(folder / f"{asset}.jpg")
                    writer.writerow([asset, s, "test" if i == 0 else "train", 48, 48, 3, f"Person {s}{i}"])
    return root


def write_soundscapes(root: Path, recordings: int = 2, seconds: float = 22.0, seed: int = 0) -> Path:
    """A Zenodo/BirdSet-style collection: soundscape_data/*.flac, annotations.csv, taxa.csv (eBird keys)."""
    rng = np.random.default_rng(seed)
    (root / "soundscape_data").mkdir(parents=True, exist_ok=True)
    rows = []
    for r in range(recordings):
        n = int(seconds * SAMPLE_RATE)
        audio = 0.01 * rng.standard_normal(n).astype(np.float32)
        for start in np.arange(1.0, seconds - 3, 6.0):
            s = int(rng.integers(len(TAXA)))
            call = tone(FREQUENCIES[s], 2.0, rng)
            i = int(start * SAMPLE_RATE)
            audio[i : i + len(call)] += call
            rows.append([f"rec{r}.flac", start, start + 2.0, 0, 8000, EBIRD_CODES[s]])
        sf.write(root / "soundscape_data" / f"rec{r}.flac", audio, SAMPLE_RATE)
    sf.write(root / "soundscape_data" / "quiet.flac", 0.01 * rng.standard_normal(SAMPLE_RATE * 6).astype(np.float32),
             SAMPLE_RATE)  # fmt: skip
    with (root / "annotations.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Filename", "Start Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
                         "Species eBird Code"])  # fmt: skip
        writer.writerows(rows)
    with (root / "taxa.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "scientific_name", "common_name", "order", "family"])
        for code, t in zip(EBIRD_CODES, TAXA, strict=True):
            writer.writerow([code, t.scientific, t.common, t.order, t.family])
    return root


@contextlib.contextmanager
def cache_root_at(path: Path):
    """Point BIRDSEARCH_CACHE at ``path`` for a block (module-scoped fixtures), then restore it."""
    previous = os.environ.get("BIRDSEARCH_CACHE")
    os.environ["BIRDSEARCH_CACHE"] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop("BIRDSEARCH_CACHE", None)
        else:
            os.environ["BIRDSEARCH_CACHE"] = previous
