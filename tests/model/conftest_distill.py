"""Helpers for the distillation and evaluation tests: tiny fast models and a world of synthetic tones.

Not a conftest (pytest does not load it); test files import it by path. The models are the real
classes in the real on-disk formats, made small: a CLAP student on 16 mel bins of 2 s windows at
16 kHz (a training step of 8 clips takes a few hundredths of a second) and the tiny open_clip teacher.
The "species" are tone patterns, one fundamental frequency each, easy enough that a few steps learn
something, with the taxa in a species table as a user would write it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

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
