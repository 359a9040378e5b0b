"""The toy world's species: a taxonomy with Latin-like names, and what each species looks and sounds like.

Names are built from what a bird looks like, as real ones often are: the common name "Crimson-crowned
Warbler" and the epithet *rubricapilla* both say that its crown is red, and its photos show a red
crown. Sibling species (one genus) share a body plan, a body colour and a call type; they differ in
one coloured mark and in the pitch and rhythm of their calls. So within-genus confusions are the
hard ones, in pictures and in sound, as in real birds.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from birdsearch.errors import ConfigError
from birdsearch.model.names import Taxon
from birdsearch.toy.config import WorldConfig

# (common-name colour, RGB, Latin prefix for the epithet)
COLOURS: tuple[tuple[str, tuple[int, int, int], str], ...] = (
    ("Crimson", (196, 18, 48), "rubri"),
    ("Amber", (255, 150, 0), "fulvi"),
    ("Golden", (250, 212, 0), "auri"),
    ("Emerald", (0, 165, 80), "smaragdi"),
    ("Azure", (30, 120, 255), "caeruli"),
    ("Violet", (140, 60, 205), "violaci"),
    ("Ivory", (250, 245, 225), "eburni"),
    ("Black", (22, 22, 22), "nigri"),
    ("Rose", (255, 120, 170), "rosei"),
    ("Teal", (0, 150, 150), "thalassi"),
    ("Chestnut", (140, 70, 25), "castanei"),
    ("Lime", (170, 230, 40), "chlori"),
)
# (common-name part, Latin suffix): the part of the bird that carries the species' colour mark.
PARTS: tuple[tuple[str, str], ...] = (
    ("crowned", "capilla"),
    ("throated", "gularis"),
    ("winged", "pennis"),
    ("breasted", "pectus"),
    ("tailed", "cauda"),
    ("masked", "larvatus"),
)
GROUP_NOUNS = (
    "Warbler", "Finch", "Thrush", "Wren", "Tanager", "Sparrow", "Flycatcher", "Vireo", "Oriole",
    "Bunting", "Lark", "Pipit", "Shrike", "Dove", "Plover", "Kingfisher",
)  # fmt: skip
# Muted body colours, one per genus (marks are bright, bodies are not, as in most birds).
BODY_COLOURS = (
    (120, 95, 70), (150, 150, 145), (110, 120, 70), (205, 185, 140), (90, 75, 65), (170, 110, 80),
    (75, 85, 95), (185, 165, 120), (135, 120, 105), (95, 105, 85), (200, 200, 195), (60, 55, 50),
)  # fmt: skip
# The call types; sibling genera get different ones.
CALL_TYPES = ("sweep_up", "sweep_down", "trill", "harmonic", "buzz", "two_note", "chirp")

ONSETS = ("b", "c", "d", "g", "l", "m", "n", "p", "r", "s", "t", "v", "ph", "th", "ch", "cr", "tr", "pl", "st")  # fmt: skip
VOWELS = ("a", "e", "i", "o", "u", "ae", "io", "y")
GENUS_ENDINGS = ("a", "us", "is", "ops", "ornis", "ura", "ella", "ix")


@dataclass(frozen=True)
class Plumage:
    """How a species is drawn. Colours are RGB; lengths are fractions of the body length."""

    body: tuple[int, int, int]  # back, head and tail (the genus colour)
    belly: tuple[int, int, int]  # underside
    wing: tuple[int, int, int]  # folded wing
    mark: tuple[int, int, int]  # the species' colour mark
    mark_part: str  # where the mark is: one of PARTS' names
    beak: tuple[int, int, int]
    body_aspect: float  # body length / body height
    head_size: float  # head radius / body length
    beak_length: float  # beak length / body length
    tail_length: float  # tail length / body length
    crest: bool  # a pointed crest on the head
    wing_bars: bool  # two pale bars on the wing
    upright: float  # body tilt in degrees (perching posture of the family)


@dataclass(frozen=True)
class Song:
    """How a species calls. A phrase is ``syllables`` syllables; phrases repeat every ``phrase_gap_s``."""

    call_type: str  # one of CALL_TYPES (shared by a genus)
    f0: float  # base frequency, Hz
    ratio: float  # frequency ratio of a sweep or a two-note interval
    syllable_s: float  # syllable duration, s
    gap_s: float  # silence between syllables, s
    syllables: int  # syllables per phrase
    phrase_gap_s: float  # silence between phrases, s
    vibrato_hz: float  # frequency modulation rate, Hz
    vibrato_depth: float  # ... and depth, relative
    trill_hz: float  # note rate inside a trill or the amplitude modulation of a buzz, Hz


@dataclass(frozen=True)
class ToySpecies:
    """One species of the toy world."""

    label: int  # index in the world's species list
    taxon: Taxon
    group: str  # the genus' group noun ("Warbler"): what a vague caption calls it
    plumage: Plumage
    song: Song

    @property
    def scientific(self) -> str:
        return self.taxon.scientific

    @property
    def common(self) -> str:
        return self.taxon.common

    @property
    def slug(self) -> str:
        """Folder name of the species in the gallery: the binomial with an underscore."""
        return self.taxon.scientific.replace(" ", "_")


def latin_root(rng: np.random.Generator, syllables: int) -> str:
    return "".join(str(rng.choice(ONSETS)) + str(rng.choice(VOWELS)) for _ in range(syllables))


def unique_names(rng: np.random.Generator, count: int, make) -> list[str]:
    """``count`` distinct names from ``make(rng)``."""
    names: list[str] = []
    while len(names) < count:
        name = make(rng)
        if name not in names:
            names.append(name)
    return names


def make_species(config: WorldConfig) -> list[ToySpecies]:
    """The world's species, in a fixed order, deterministic from ``config.seed``."""
    if config.n_species > len(COLOURS) * len(PARTS):
        raise ConfigError(
            f"{config.n_species} species exceed the {len(COLOURS) * len(PARTS)} distinct colour marks"
        )
    rng = np.random.default_rng([config.seed, 1])
    n_families = config.orders * config.families_per_order
    n_genera = n_families * config.genera_per_family
    orders = unique_names(rng, config.orders, lambda r: latin_root(r, 2).capitalize() + "iformes")
    families = unique_names(rng, n_families, lambda r: latin_root(r, 2).capitalize() + "idae")
    genera = unique_names(
        rng, n_genera, lambda r: latin_root(r, 2).capitalize() + str(r.choice(GENUS_ENDINGS))
    )
    marks = [(c, p) for c in range(len(COLOURS)) for p in range(len(PARTS))]
    mark_order = rng.permutation(len(marks))
    call_offset = int(rng.integers(len(CALL_TYPES)))
    species: list[ToySpecies] = []
    for g, genus in enumerate(genera):
        family_index = g // config.genera_per_family
        order_index = family_index // config.families_per_order
        group = GROUP_NOUNS[g % len(GROUP_NOUNS)]
        if g >= len(GROUP_NOUNS):  # more genera than nouns: qualify the repeats
            group = f"{('Marsh', 'Forest', 'Mountain')[(g // len(GROUP_NOUNS) - 1) % 3]} {group}"
        body_plan = genus_body_plan(rng, g, family_index)
        call = genus_call(rng, g, call_offset)
        for s in range(config.species_per_genus):
            colour, part = marks[int(mark_order[len(species)])]
            colour_name, rgb, latin_colour = COLOURS[colour]
            part_name, latin_part = PARTS[part]
            taxon = Taxon(
                scientific=f"{genus} {latin_colour}{latin_part}",
                common=f"{colour_name}-{part_name} {group}",
                order=orders[order_index],
                family=families[family_index],
            )
            plumage = Plumage(mark=rgb, mark_part=part_name, **body_plan)
            song = species_song(rng, call, s, config.species_per_genus)
            species.append(ToySpecies(len(species), taxon, group, plumage, song))
    return species


def genus_body_plan(rng: np.random.Generator, genus_index: int, family_index: int) -> dict:
    """Shape and base colours shared by a genus; posture shared by a family."""
    body = BODY_COLOURS[genus_index % len(BODY_COLOURS)]
    family_rng = np.random.default_rng([family_index, 7])
    return {
        "body": body,
        "belly": tuple(int(min(255, c * 0.5 + 125)) for c in body),
        "wing": tuple(int(c * 0.7) for c in body),
        "beak": ((40, 40, 40), (230, 170, 40), (200, 120, 60))[int(rng.integers(3))],
        "body_aspect": float(rng.uniform(1.3, 2.0)),
        "head_size": float(rng.uniform(0.2, 0.3)),
        "beak_length": float(rng.uniform(0.1, 0.4)),
        "tail_length": float(rng.uniform(0.25, 0.6)),
        "crest": bool(rng.random() < 0.35),
        "wing_bars": bool(rng.random() < 0.4),
        "upright": float(family_rng.uniform(-5, 35)),
    }


def genus_call(rng: np.random.Generator, genus_index: int, offset: int) -> dict:
    """Call type and pitch region shared by a genus."""
    return {
        "call_type": CALL_TYPES[(genus_index + offset) % len(CALL_TYPES)],
        "f0": float(np.exp(rng.uniform(np.log(1800), np.log(6500)))),
        "syllable_s": float(rng.uniform(0.08, 0.3)),
        "trill_hz": float(rng.uniform(12, 40)),
    }


def species_song(rng: np.random.Generator, call: dict, index: int, siblings: int) -> Song:
    """A species' song: its genus' call type at its own pitch and rhythm."""
    # Siblings sit about a fifth apart in pitch around their genus' base frequency.
    pitch = 1.45 ** (index - (siblings - 1) / 2)
    return Song(
        call_type=call["call_type"],
        f0=float(min(call["f0"] * pitch, 9000.0)),
        ratio=float(rng.uniform(1.3, 1.8)),
        syllable_s=float(call["syllable_s"] * rng.uniform(0.7, 1.3)),
        gap_s=float(rng.uniform(0.03, 0.2)),
        syllables=int(rng.integers(1, 6)),
        phrase_gap_s=float(rng.uniform(0.25, 1.0)),
        vibrato_hz=float(rng.uniform(0, 30)),
        vibrato_depth=float(rng.uniform(0, 0.05)),
        trill_hz=float(call["trill_hz"] * rng.uniform(0.8, 1.25)),
    )


TAXA_COLUMNS = (
    "label", "scientific_name", "common_name", "genus", "family", "order", "class", "phylum", "kingdom", "slug",
)  # fmt: skip


def write_taxa_csv(species: list[ToySpecies], path: Path) -> None:
    """``taxa.csv``, in SSW60's spirit: one row per species with its names and lineage."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TAXA_COLUMNS)
        for sp in species:
            t = sp.taxon
            writer.writerow(
                [
                    sp.label,
                    t.scientific,
                    t.common,
                    t.genus,
                    t.family,
                    t.order,
                    t.klass,
                    t.phylum,
                    t.kingdom,
                    sp.slug,
                ]
            )


def read_taxa(path: Path) -> list[Taxon]:
    """The taxa of a ``taxa.csv``, in label order."""
    with Path(path).open(newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda row: int(row["label"]))
    return [
        Taxon(
            scientific=row["scientific_name"],
            common=row["common_name"],
            kingdom=row["kingdom"],
            phylum=row["phylum"],
            klass=row["class"],
            order=row["order"],
            family=row["family"],
        )
        for row in rows
    ]
