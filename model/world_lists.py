"""The world's bird checklists as species tables, read in the layouts their publishers ship.

Four layouts are recognised by their header row (the names as the files spell them):

``ebird``     the eBird taxonomy CSV (``eBird_taxonomy_v2024.csv``): ``TAXON_ORDER, CATEGORY,
              SPECIES_CODE, [TAXON_CONCEPT_ID,] PRIMARY_COM_NAME, SCI_NAME, ORDER1 | ORDER, FAMILY,
              SPECIES_GROUP, REPORT_AS`` (``ORDER1`` up to v2022; v2023 added ``TAXON_CONCEPT_ID``
              and renamed it ``ORDER``). One row per taxon; ``CATEGORY`` is ``species``, ``issf``,
              ``slash``, ``spuh``, ``hybrid``, ``form``, ``domestic`` or ``intergrade``.
``clements``  the eBird/Clements checklist CSV (``eBird-Clements-v2024-integrated-checklist-...csv``):
              ``sort v2024, species_code, Clements v2024b change, text for website v2024b, category,
              English name, scientific name, range, order, family, extinct, extinct year, sort_v2023``
              (the version in the first column's name changes every year). ``category`` is
              ``species``, ``group (polytypic)``, ``group (monotypic)``, ``subspecies`` and, in the
              integrated list, eBird's other categories.
``ioc``       the IOC World Bird List master list saved as CSV: ``Infraclass, [Parvclass,] Order,
              Family (Scientific), Family (English), Genus, Species (Scientific), Subspecies,
              Authority, Species (English), Breeding Range, ..., Code, Comment``, beneath a title
              block. It is a tree: one row per order, family, genus, species and subspecies, each
              filling only its own rank's column; a species row gives the epithet alone, its genus
              is the last genus row above it. Orders are in capitals.
``ioc_multilingual``  the IOC World Bird List's multilingual version (``Multiling IOC 14.1_b.xlsx``),
              its ``List`` sheet saved as CSV: ``seq, Order, Family, IOC_14.1, English, Catalan,
              Chinese, Chinese (Traditional), Croatian, ..., Thai``: one row per species, the
              scientific name in the column named after the list's version (``IOC_15.1`` a year
              later), then its common name in each language, English first. Empty where a
              language has no name yet. Orders are in capitals.

Only species-rank rows become species. eBird and Clements families read
"Struthionidae (Ostriches)": the gloss is dropped. The eBird species code is kept as the species'
key, so manifests may name species by code.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from birdsearch.errors import ConfigError
from birdsearch.model.names import Taxon

log = logging.getLogger(__name__)

HEADER_SEARCH_ROWS = 20  # the IOC master list's header sits beneath a title block
EBIRD_COLUMNS = {"TAXON_ORDER", "CATEGORY", "SPECIES_CODE", "PRIMARY_COM_NAME", "SCI_NAME", "FAMILY"}
CLEMENTS_COLUMNS = {"category", "English name", "scientific name", "order", "family"}
IOC_COLUMNS = {
    "Order",
    "Family (Scientific)",
    "Genus",
    "Species (Scientific)",
    "Subspecies",
    "Species (English)",
}
MULTILINGUAL_COLUMNS = {"Order", "Family", "English"}
MULTILINGUAL_SCIENTIFIC = re.compile(r"IOC_\d+(\.\d+)?")  # "IOC_14.1": the version's scientific names


@dataclass(frozen=True)
class WorldList:
    """A checklist's species: taxa in file order, each one's key (species code or ''), the layout.

    ``languages`` maps a language as the list names it ("German") to each taxon's common name in
    it ('' where it has none); only the IOC multilingual list has them.
    """

    layout: str
    taxa: list[Taxon]
    keys: list[str]
    languages: dict[str, list[str]] = field(default_factory=dict)


def detect_layout(header: list[str]) -> str | None:
    """``ebird``, ``clements``, ``ioc`` or ``ioc_multilingual`` from a header row; None for any other table."""
    names = {h.strip() for h in header}
    if names >= EBIRD_COLUMNS and ({"ORDER1", "ORDER"} & names):
        return "ebird"
    if names >= CLEMENTS_COLUMNS and any(re.fullmatch(r"sort v\d{4}", n) for n in names):
        return "clements"
    if names >= IOC_COLUMNS:
        return "ioc"
    if names >= MULTILINGUAL_COLUMNS and any(MULTILINGUAL_SCIENTIFIC.fullmatch(n) for n in names):
        return "ioc_multilingual"
    return None


def read_rows(path: Path) -> list[list[str]]:
    """The file's rows; UTF-8 (a BOM allowed), else Windows-1252, as older checklist files are."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    return list(csv.reader(io.StringIO(text), delimiter=delimiter))


def read_world_list(path: str | Path) -> WorldList | None:
    """A species table in a published checklist layout; None when the file is in none of them."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".tsv", ".txt") or not path.is_file():
        return None
    rows = read_rows(path)
    for at, header in enumerate(rows[:HEADER_SEARCH_ROWS]):
        layout = detect_layout(header)
        if layout is not None:
            columns = [h.strip() for h in header]
            records = [dict(zip(columns, row, strict=False)) for row in rows[at + 1 :]]
            if layout == "ioc_multilingual":
                world = parse_multilingual(columns, records, at + 2, str(path))
            else:
                world = WorldList(layout, *PARSERS[layout](records, at + 2, str(path)))
            if not world.taxa:
                raise ConfigError(f"{path}: a {layout} checklist with no species-rank rows")
            log.info("%s: %s checklist, %d species", path, layout, len(world.taxa))
            return world
    return None


def strip_gloss(family: str) -> str:
    """'Struthionidae (Ostriches)' -> 'Struthionidae'."""
    return family.split("(")[0].strip()


def clean(text: str | None) -> str:
    return re.sub(
        r"\s+", " ", (text or "").replace("\u2020", "")
    ).strip()  # IOC marks extinct taxa with a dagger


def make_taxon(scientific: str, common: str, order: str, family: str, where: str) -> Taxon:
    try:
        return Taxon(scientific, common=common, order=order, family=family)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e


@dataclass(frozen=True)
class FlatColumns:
    """Where a flat checklist (one row per taxon, its rank in a category column) keeps each field."""

    category: str
    scientific: str
    common: str
    order: tuple[str, ...]  # the first non-empty one (eBird renamed ORDER1 to ORDER in v2023)
    family: str
    key: str


EBIRD = FlatColumns("CATEGORY", "SCI_NAME", "PRIMARY_COM_NAME", ("ORDER1", "ORDER"), "FAMILY", "SPECIES_CODE")
CLEMENTS = FlatColumns("category", "scientific name", "English name", ("order",), "family", "species_code")


def parse_flat(
    records: list[dict[str, str]], first_line: int, source: str, columns: FlatColumns
) -> tuple[list[Taxon], list[str]]:
    """Rows whose category is ``species`` (the eBird taxonomy and the eBird/Clements checklist)."""
    taxa, keys, seen = [], [], set()
    for line, r in enumerate(records, start=first_line):
        scientific = clean(r.get(columns.scientific))
        if clean(r.get(columns.category)).lower() != "species" or scientific in seen:
            continue
        seen.add(scientific)
        order = clean(next((r[c] for c in columns.order if r.get(c)), ""))
        family = strip_gloss(clean(r.get(columns.family)))
        taxa.append(
            make_taxon(scientific, clean(r.get(columns.common)), order, family, f"{source} line {line}")
        )
        keys.append(clean(r.get(columns.key)))
    return taxa, keys


def parse_ioc(records: list[dict[str, str]], first_line: int, source: str) -> tuple[list[Taxon], list[str]]:
    """Species rows of the tree, each under the order, family and genus rows above it."""
    taxa, keys, seen = [], [], set()
    order = family = genus = ""
    for line, r in enumerate(records, start=first_line):
        if clean(r.get("Order")):
            order = clean(r.get("Order")).capitalize()  # IOC writes orders in capitals
        if clean(r.get("Family (Scientific)")):
            family = clean(r.get("Family (Scientific)"))
        if clean(r.get("Genus")):
            genus = clean(r.get("Genus")).capitalize()
        epithet = clean(r.get("Species (Scientific)")).lower()
        if not epithet or clean(r.get("Subspecies")):
            continue
        if not genus:
            raise ConfigError(f"{source} line {line}: species {epithet!r} has no genus row above it")
        scientific = f"{genus} {epithet}"
        if scientific in seen:
            continue
        seen.add(scientific)
        taxa.append(
            make_taxon(scientific, clean(r.get("Species (English)")), order, family, f"{source} line {line}")
        )
        keys.append("")
    return taxa, keys


def parse_multilingual(
    header: list[str], records: list[dict[str, str]], first_line: int, source: str
) -> WorldList:
    """One species a row: its scientific name (the ``IOC_<version>`` column), lineage and names by language."""
    scientific_column = next(h for h in header if MULTILINGUAL_SCIENTIFIC.fullmatch(h))
    languages = header[header.index("English") + 1 :]  # the languages follow English
    taxa: list[Taxon] = []
    names: dict[str, list[str]] = {language: [] for language in languages}
    seen: set[str] = set()
    for line, r in enumerate(records, start=first_line):
        scientific = clean(r.get(scientific_column))
        if len(scientific.split()) != 2 or scientific in seen:  # blank rows, and any row above species rank
            continue
        seen.add(scientific)
        order, family = clean(r.get("Order")).capitalize(), clean(r.get("Family"))
        taxa.append(make_taxon(scientific, clean(r.get("English")), order, family, f"{source} line {line}"))
        for language in languages:
            names[language].append(clean(r.get(language)))
    return WorldList("ioc_multilingual", taxa, [""] * len(taxa), names)


PARSERS = {
    "ebird": partial(parse_flat, columns=EBIRD),
    "clements": partial(parse_flat, columns=CLEMENTS),
    "ioc": parse_ioc,
}
