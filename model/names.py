"""Species names as BioCLIP's text tower was trained on them, and the zero-shot templates.

BioCLIP's class-name formats (Stevens et al. 2024; pybioclip):

- ``sci``: "Turdus migratorius"
- ``com``: "American Robin"
- ``sci_com``: "Turdus migratorius with common name American Robin"
- ``taxon``: "Animalia Chordata Aves Passeriformes Turdidae Turdus migratorius"
- ``taxon_com``: "Animalia Chordata Aves Passeriformes Turdidae Turdus migratorius with common name
  American Robin"

A class embedding is the mean of the L2-normalised embeddings of the name in every template,
renormalised (``Teacher.embed_species``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from birdsearch.errors import ConfigError

NAME_FORMATS = ("sci", "com", "sci_com", "taxon", "taxon_com")
APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})  # Cooper’s Hawk is Cooper's Hawk

# OpenAI's 80 ImageNet prompt templates (Radford et al. 2021), as BioCLIP and pybioclip use them.
OPENAI_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)  # fmt: skip

# Named template sets, so that a checkpoint card or an index manifest can record which one it used.
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "openai": OPENAI_TEMPLATES,
    "single": ("a photo of {}.",),
    "none": ("{}",),
}


@dataclass(frozen=True)
class Taxon:
    """One species and its lineage: the species record every part of birdsearch uses.

    The fields are spelled the same wherever a species travels (the index's species table is
    ``birdsearch.indexer.store.SpeciesRecord``, this record plus counts). Ranks above genus may be
    empty when unknown; ``genus`` defaults to the binomial's first word.
    """

    scientific: str  # binomial, "Turdus migratorius"
    common: str = ""  # "American Robin"
    kingdom: str = "Animalia"
    phylum: str = "Chordata"
    klass: str = "Aves"  # `class` is a Python keyword
    order: str = ""
    family: str = ""
    genus: str = ""  # "Turdus"; derived from ``scientific`` when not given

    def __post_init__(self) -> None:
        if len(self.scientific.split()) < 2:
            raise ConfigError(f"scientific name {self.scientific!r} is not a binomial ('Genus epithet')")
        self._derive_genus()

    def _derive_genus(self) -> None:
        if not self.genus and len(self.scientific.split()) >= 2:
            object.__setattr__(self, "genus", self.scientific.split()[0])  # frozen: set once, here

    @property
    def lineage(self) -> str:
        ranks = [self.kingdom, self.phylum, self.klass, self.order, self.family, self.scientific]
        return " ".join(r for r in ranks if r)

    def name(self, fmt: str = "taxon_com") -> str:
        """This species' name in one of ``NAME_FORMATS``; formats with a common name fall back without one."""
        if fmt not in NAME_FORMATS:
            raise ConfigError(f"unknown name format {fmt!r}: use one of {', '.join(NAME_FORMATS)}")
        base = self.lineage if fmt.startswith("taxon") else self.scientific
        if fmt == "com":
            return self.common or self.scientific
        if fmt.endswith("_com") and self.common:
            return f"{base} with common name {self.common}"
        return base

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def normalise_name(value: object) -> str:
    """A species name as names are compared: case, underscores, runs of spaces and apostrophe styles do not matter."""
    return " ".join(str(value).replace("_", " ").translate(APOSTROPHES).split()).casefold()


def templates_for(name: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A named template set, or an explicit list of templates each holding one ``{}``."""
    if isinstance(name, str):
        if name not in TEMPLATE_SETS:
            raise ConfigError(f"unknown template set {name!r}: use one of {', '.join(TEMPLATE_SETS)}")
        return TEMPLATE_SETS[name]
    templates = tuple(name)
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise ConfigError(f"templates must each contain exactly one '{{}}': {bad or 'none given'}")
    return templates
