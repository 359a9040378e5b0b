"""Extra toy recordings for calibration, drawn on demand into a folder of the caller's choice.

- ``background_only``: field background (pink hiss, brown rumble, now and then an insect) with no
  bird at all, to fit and to test abstention: a calibrated model should find nothing in them;
- ``extra_soundscapes``: more soundscapes like the world's own, annotated per calling bout, for a
  larger evaluation than the handful a world ships;
- ``calibration_clips``: what the demo and ``bench/calibration.py`` fit confidences on;
- ``outside_clips``: the open world's validation recordings (``birdsearch.toy.openset``), which the
  demo fits the confidences and the novelty gate with as recordings that must give no detection.

Each subset ("fit", "test", ...) has its own seeded stream, independent of the world's splits, so
drawing these changes nothing the world or its shipped models depend on.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from birdsearch.toy.build import noise_bank
from birdsearch.toy.calls import SAMPLE_RATE, soundscape

BACKGROUND_SEED, SOUNDSCAPE_SEED = 31, 32  # beside the world's split seeds (birdsearch.toy.build.SPLIT_SEEDS)


def subset_rng(world: object, stream: int, subset: str, i: int) -> np.random.Generator:
    return np.random.default_rng([world.config.seed, stream, zlib.crc32(subset.encode()), i])  # type: ignore[attr-defined]


def background_only(world: object, folder: Path, count: int, seconds: float, subset: str) -> list[Path]:
    """``count`` FLAC recordings of ``seconds`` of background with no bird (written once, then reused)."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    noise = noise_bank(world.config.seed)  # type: ignore[attr-defined]
    paths = []
    for i in range(count):
        path = folder / f"background_{subset}_{i:03d}.flac"
        if not path.is_file():
            rng = subset_rng(world, BACKGROUND_SEED, subset, i)
            samples = noise.background(rng, int(seconds * SAMPLE_RATE)) * rng.uniform(0.05, 0.3)
            sf.write(path, samples, SAMPLE_RATE, subtype="PCM_16")
        paths.append(path)
    return paths


def extra_soundscapes(
    world: object, folder: Path, count: int, subset: str
) -> list[tuple[Path, list[tuple[float, float, str]]]]:
    """``count`` soundscapes of 3–6 of the world's species: (path, [(start_s, end_s, species), ...])."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    noise = noise_bank(world.config.seed)  # type: ignore[attr-defined]
    species = world.species  # type: ignore[attr-defined]
    low, high = world.config.soundscape_s  # type: ignore[attr-defined]
    out = []
    for i in range(count):
        rng = subset_rng(world, SOUNDSCAPE_SEED, subset, i)
        chosen = [
            species[j]
            for j in rng.choice(len(species), int(rng.integers(3, min(6, len(species)) + 1)), replace=False)
        ]
        mixture, events = soundscape([sp.song for sp in chosen], rng.uniform(low, high), rng, noise)
        path = folder / f"soundscape_{subset}_{i:03d}.flac"
        if not path.is_file():
            sf.write(path, mixture, SAMPLE_RATE, subtype="PCM_16")
        out.append((path, [(e.start_s, e.end_s, chosen[k].scientific) for k, e in events]))
    return out


def calibration_clips(world: object, folder: Path, background: int = 8) -> list[tuple[str, str | None]]:
    """Clips held out from training to fit confidences on: (path, species, or None for no bird).

    The distillation's validation recordings (``distill.csv`` split ``val``) and ``background``
    background-only recordings of 30 s (subset "fit"), drawn into ``folder`` once.
    """
    rows = world.read_manifest(world.distill_manifest)  # type: ignore[attr-defined]
    held_out: list[tuple[str, str | None]] = [(r["path"], r["species"]) for r in rows if r["split"] == "val"]
    return held_out + [(str(p), None) for p in background_only(world, folder, background, 30.0, "fit")]


def outside_clips(world: object) -> list[tuple[str, str]]:
    """(path, group) of the open world's validation recordings: out-of-gallery birds, non-bird sounds
    and the shifted recorder, drawn on first use (the world's ``open-val`` stage)."""
    from birdsearch.toy.world import ensure_world

    world = ensure_world(world.config, stages=("open-val",), progress=False)  # type: ignore[attr-defined]
    return [(r["path"], r["group"]) for r in world.read_manifest(world.open_manifest("val"))]
