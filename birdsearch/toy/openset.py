"""The open world: what a recorder hears that the gallery and the models never saw.

Three groups of recordings, drawn apart from the rest of the world (their own stages, cache key and
random streams, so that adding them changes no byte or key of the world or its shipped models):

- ``out_of_gallery``: birds whose calls exist but whose photos are not in the gallery. Kind
  ``same_genus``: a new sibling in one of the gallery's genera (the genus' call type, at a pitch
  beyond its gallery siblings'), the hard case; kind ``new_genus``: genera the gallery lacks, some
  with call types no gallery bird uses (``warble``, ``rattle``);
- ``non_bird``: insect stridulation, frog choruses, rain, wind, engines and speech-like formant
  sequences (``birdsearch.toy.open_sounds``), over the world's field background;
- ``shifted``: the gallery's own species under another recorder: band-limited, clipped, or with
  another noise floor.

Each is split into ``val`` (for fitting thresholds) and ``test`` (for scoring) by kind and
"species": out-of-gallery siblings alternate between the splits by genus, new genera go whole to
one split, and every non-bird kind and recorder shift has variants (an insect species, a speaker, a
cut-off frequency) of which the even ones are validation and the odd ones test; a shifted recorder
records the world's even-numbered species in validation and the odd-numbered ones in test. So no
species, variant or recording used to fit a threshold is scored.

Layout (``<world>/open-<k>/``, ``k`` hashing the world's data key, the ``OpenConfig`` and
``OPEN_CODE_VERSION``): ``val/`` and ``test/`` hold the recordings (Ogg Vorbis at 48 kHz; FLAC at
the low rate of a band-limited recorder) and ``val.csv``/``test.csv`` list them with the columns
``OPEN_COLUMNS``. Each split is a stage of the world (``open-val``, ``open-test``), built only when
asked for: ``ensure_world(preset, stages=("open-val",))``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from birdsearch.toy.build import fix_ogg_serial, noise_bank, write_csv
from birdsearch.toy.calls import SAMPLE_RATE, mix, recording, sing
from birdsearch.toy.config import digest, preset_name
from birdsearch.toy.open_sounds import (
    NON_BIRD_KINDS,
    SHIFT_KINDS,
    Variant,
    draw_shift,
    draw_variant,
    non_bird,
    shift_recorder,
)
from birdsearch.toy.parallel import call, idle_cores, ordered_map
from birdsearch.toy.taxonomy import COLOURS, PARTS, Song, latin_root, species_song

if TYPE_CHECKING:  # the world imports this module's stages
    from birdsearch.toy.world import ToyWorld

log = logging.getLogger(__name__)

# Part of the open world's key: bump it when a generator here changes its output.
OPEN_CODE_VERSION = "open-1"
OPEN_SEED = 41  # beside the world's split seeds (build.SPLIT_SEEDS) and background.py's 31, 32
SPLITS = ("val", "test")
GROUPS = ("out_of_gallery", "non_bird", "shifted")
OPEN_COLUMNS = ("path", "group", "kind", "variant", "species", "split")
# Group nouns of the genera the gallery lacks (the gallery's are taxonomy.GROUP_NOUNS).
NEW_GROUP_NOUNS = ("Babbler", "Bulbul", "Cisticola", "Starling", "Honeyeater", "Swift", "Cuckoo", "Nightjar")
NEW_CALL_TYPES = ("warble", "rattle", "sweep_up", "two_note")  # cycled over the new genera


@dataclass(frozen=True)
class OpenConfig:
    """How much of the open world there is. Counts per split are per species or variant."""

    sibling_species: int = 8  # out-of-gallery species in the gallery's genera (one per genus at most)
    new_genera: int = 4  # genera the gallery lacks
    species_per_new_genus: int = 2
    variants: int = 4  # per non-bird kind and per recorder shift (even: validation, odd: test)
    val_recordings: int = 2  # per out-of-gallery species, non-bird variant or recorder variant
    test_recordings: int = 4
    recording_s: tuple[float, float] = (10.0, 24.0)  # range of recording lengths, seconds

    def recordings(self, split: str) -> int:
        return self.val_recordings if split == "val" else self.test_recordings


OPEN_PRESETS = {
    "default": OpenConfig(),
    "small": OpenConfig(sibling_species=4, new_genera=2, variants=2, val_recordings=2, test_recordings=3),
    "tiny": OpenConfig(
        sibling_species=2,
        new_genera=1,
        variants=2,
        val_recordings=1,
        test_recordings=1,
        recording_s=(10.0, 12.0),
    ),  # fmt: skip
}


def open_config(world: ToyWorld) -> OpenConfig:
    """The open world of a preset's world; a custom world gets the default's."""
    return OPEN_PRESETS.get(preset_name(world.config) or "default", OPEN_PRESETS["default"])


def open_key(world: ToyWorld) -> str:
    """The open world's cache key: the world's data, the ``OpenConfig`` and ``OPEN_CODE_VERSION``."""
    return digest(
        {"data": world.config.data_key(), "open": asdict(open_config(world)), "code": OPEN_CODE_VERSION}
    )[:8]


# --- birds outside the gallery -------------------------------------------------------------------


@dataclass(frozen=True)
class OutsideSpecies:
    """A bird the world's recorders hear but its gallery has no photo of."""

    scientific: str
    common: str
    kind: str  # "same_genus" (a genus the gallery has) or "new_genus"
    song: Song
    split: str  # "val" or "test"


def outside_species(world: ToyWorld) -> list[OutsideSpecies]:
    """The out-of-gallery species, deterministic from the world's seed (its own stream)."""
    config = open_config(world)
    rng = np.random.default_rng([world.config.seed, OPEN_SEED, 0])
    genera: dict[str, list[Any]] = {}
    for sp in world.species:
        genera.setdefault(sp.taxon.genus, []).append(sp)
    taken = {sp.common.split(" ")[0] for sp in world.species}
    marks = [(c, p) for c in COLOURS for p in PARTS if f"{c[0]}-{p[0]}" not in taken]
    marks = [marks[i] for i in rng.permutation(len(marks))]
    out = []
    chosen = rng.permutation(len(genera))[: config.sibling_species]
    for i, g in enumerate(chosen):
        genus, siblings = list(genera.items())[int(g)]
        songs = [sp.song for sp in siblings]
        call = {"call_type": songs[0].call_type, "f0": float(np.exp(np.mean([np.log(s.f0) for s in songs]))),
                "syllable_s": float(np.mean([s.syllable_s for s in songs])),
                "trill_hz": float(np.mean([s.trill_hz for s in songs]))}  # fmt: skip
        # Beyond the siblings' pitches, above or below: a fifth (x1.45) past the highest or lowest.
        index = len(siblings) if i % 2 == 0 else -1
        (colour, _, latin_colour), (part, latin_part) = marks.pop()
        out.append(OutsideSpecies(f"{genus} {latin_colour}{latin_part}", f"{colour}-{part} {siblings[0].group}",
                                  "same_genus", species_song(rng, call, index, len(siblings)), SPLITS[i % 2]))  # fmt: skip
    names = {sp.taxon.genus for sp in world.species}
    for g in range(config.new_genera):
        genus = latin_root(rng, 2).capitalize() + "ura"
        while genus in names:
            genus = latin_root(rng, 2).capitalize() + "ura"
        names.add(genus)
        call = {"call_type": NEW_CALL_TYPES[g % len(NEW_CALL_TYPES)],
                "f0": float(np.exp(rng.uniform(np.log(1800), np.log(6500)))),
                "syllable_s": float(rng.uniform(0.08, 0.3)), "trill_hz": float(rng.uniform(12, 40))}  # fmt: skip
        for s in range(config.species_per_new_genus):
            (colour, _, latin_colour), (part, latin_part) = marks.pop()
            song = species_song(rng, call, s, config.species_per_new_genus)
            common = f"{colour}-{part} {NEW_GROUP_NOUNS[g % len(NEW_GROUP_NOUNS)]}"
            out.append(
                OutsideSpecies(
                    f"{genus} {latin_colour}{latin_part}", common, "new_genus", song, SPLITS[g % 2]
                )
            )
    return out


# --- the recordings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenItem:
    """One recording of the open world to synthesise."""

    group: str  # one of GROUPS
    kind: str  # same_genus/new_genus, a non-bird kind, or a recorder shift
    variant: str  # the out-of-gallery species' name, or "<kind>-<variant index>"
    species: str  # the bird that calls: out-of-gallery or (shifted recorder) the gallery's; "" for non-birds
    split: str
    stream: tuple[int, ...]  # the recording's random stream, below (world seed, OPEN_SEED)
    song: Song | None = None  # the bird's song (out-of-gallery, shifted)
    sound: Variant | None = None  # the non-bird variant or the recorder shift
    position: int = 0  # in the split's list: names the file and its Ogg serial


def open_items(world: ToyWorld, split: str) -> list[OpenItem]:
    """Every recording of ``split``, in a fixed order."""
    config = open_config(world)
    count = config.recordings(split)
    items = [
        OpenItem("out_of_gallery", sp.kind, sp.scientific, sp.scientific, split, (1, i, r), song=sp.song)
        for i, sp in enumerate(outside_species(world)) if sp.split == split
        for r in range(count)
    ]  # fmt: skip
    for k, kind in enumerate(NON_BIRD_KINDS):
        for v in range(SPLITS.index(split), config.variants, 2):
            variant = draw_variant(kind, v, variant_rng(world, 2, k, v))
            items += [
                OpenItem("non_bird", kind, f"{kind}-{v}", "", split, (2, k, v, r), sound=variant)
                for r in range(count)
            ]
    # A shifted recorder hears the world's even-numbered species in validation, odd ones in test.
    heard = world.species[SPLITS.index(split) :: 2]
    for k, kind in enumerate(SHIFT_KINDS):
        for v in range(SPLITS.index(split), config.variants, 2):
            shift = draw_shift(kind, v, variant_rng(world, 3, k, v))
            for r in range(count):
                sp = heard[(v * count + r + k) % len(heard)]
                items.append(OpenItem("shifted", kind, f"{kind}-{v}", sp.scientific, split, (3, k, v, r),
                                      song=sp.song, sound=shift))  # fmt: skip
    return [replace(item, position=p) for p, item in enumerate(items)]


def variant_rng(world: ToyWorld, group: int, kind: int, variant: int) -> np.random.Generator:
    return np.random.default_rng([world.config.seed, OPEN_SEED, group, kind, variant])


def synthesise(world: ToyWorld, item: OpenItem) -> tuple[np.ndarray, int, np.random.Generator]:
    """The item's samples, their rate, and its generator (for what writing it still draws)."""
    rng = np.random.default_rng([world.config.seed, OPEN_SEED, *item.stream])
    config = open_config(world)
    noise = noise_bank(world.config.seed)
    duration = float(rng.uniform(*config.recording_s))
    if item.group == "out_of_gallery":
        assert item.song is not None
        return recording(item.song, duration, rng, noise), SAMPLE_RATE, rng
    if item.group == "non_bird":
        assert item.sound is not None
        sound = non_bird(item.sound, duration, rng)
        return mix(sound, noise.background(rng, len(sound)), rng.uniform(5, 30), rng), SAMPLE_RATE, rng
    assert item.song is not None and item.sound is not None
    clean, _ = sing(item.song, duration, rng)
    samples, rate = shift_recorder(clean, noise.background(rng, len(clean)), item.sound, rng)
    return samples, rate, rng


def write_item(world: ToyWorld, item: OpenItem) -> tuple[Path, float]:
    """Synthesise and save one recording; returns its path and duration in seconds."""
    import soundfile as sf

    samples, rate, _ = synthesise(world, item)
    folder = world.open_dir / item.split
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{item.split}_{item.position:04d}_{item.group}_{item.variant.replace(' ', '_')}"
    if rate == SAMPLE_RATE:
        path = folder / f"{stem}.ogg"
        sf.write(path, samples, rate, subtype="VORBIS")
        fix_ogg_serial(path, 100_000 + item.position)
    else:  # a band-limited recorder's low rate, which Vorbis encodes poorly
        path = folder / f"{stem}.flac"
        sf.write(path, samples, rate, subtype="PCM_16")
    return path, len(samples) / rate


def build_split(world: ToyWorld, split: str, progress: bool) -> dict[str, Any]:
    """The recordings of one split and their manifest (``world.open_manifest(split)``)."""
    items = open_items(world, split)
    written = ordered_map(call, [(write_item, (world, item)) for item in items], idle_cores())
    bar = tqdm(written, total=len(items), desc=f"open world ({split})", unit="rec", disable=not progress)
    rows, seconds = [], 0.0
    for item, (path, duration) in zip(items, bar, strict=True):
        rows.append([path, item.group, item.kind, item.variant, item.species, item.split])
        seconds += duration
    write_csv(world.open_manifest(split), OPEN_COLUMNS, rows)
    return {"recordings": len(rows), "audio_seconds": round(seconds, 1), "open_key": open_key(world)}


def stage_builder(split: str):
    def build(world: ToyWorld, progress: bool) -> dict[str, Any]:
        return build_split(world, split, progress)

    return build


STAGE_BUILDERS = {f"open-{split}": stage_builder(split) for split in SPLITS}
STAGE_OUTPUTS = {
    f"open-{split}": (lambda s: lambda w: [w.open_dir / s, w.open_manifest(s)])(split) for split in SPLITS
}
