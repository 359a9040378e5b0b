"""Species labels to taxonomy: a gallery says "Turdus_migratorius" or "American Robin", the index
stores the scientific name, common name, genus, family and order.

Sources, in order: taxonomy the gallery's manifest gives; the species tables given with
``--taxa`` (the world's checklists as published: eBird taxonomy, eBird/Clements, IOC master list;
``birdsearch.model.world_lists``), then the bundled table of common birds (``data/birds.csv``),
each matched by scientific or common name (or eBird species code), case-insensitively; the genus of
a binomial found in those tables (family and order); otherwise the label is kept as it is, with one
warning per label naming the fields it lacks, and the image is still indexed.

A species' eBird code (``amerob``, what BirdNET writes in Raven's ``Species Code``) comes from the
manifest's ``species_code`` column, else from any given table that has one (the eBird taxonomy and
the eBird/Clements checklist do; the IOC list and the bundled table do not); else it stays empty.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path

from birdsearch.errors import ConfigError
from birdsearch.indexer.store import SpeciesRecord
from birdsearch.model.names import normalise_name
from birdsearch.model.world_lists import read_world_list

log = logging.getLogger(__name__)

BIRD_TABLE = "birds.csv"
# Higher ranks every bird shares; the gallery may override them (non-bird galleries, say).
BIRD_LINEAGE = ("Animalia", "Chordata", "Aves")


@dataclass(frozen=True)
class TableRow:
    """One row of the bundled bird table."""

    scientific: str
    common: str
    order: str
    family: str
    code: str = ""  # the eBird species code ("amerob") where the table gives one


Lookups = tuple[dict[str, TableRow], dict[str, TableRow], dict[str, TableRow]]


def lookups(entries: Iterable[TableRow]) -> Lookups:
    """Rows indexed three ways: by scientific name (and code), by common name, by genus; first wins."""
    by_scientific: dict[str, TableRow] = {}
    by_common: dict[str, TableRow] = {}
    by_genus: dict[str, TableRow] = {}
    for entry in entries:
        by_scientific.setdefault(normalise_name(entry.scientific), entry)
        if entry.code:
            by_scientific.setdefault(normalise_name(entry.code), entry)
        if entry.common:
            by_common.setdefault(normalise_name(entry.common), entry)
        by_genus.setdefault(normalise_name(entry.scientific.split()[0]), entry)
    return by_scientific, by_common, by_genus


@lru_cache(maxsize=1)
def bird_table() -> Lookups:
    """The bundled table indexed three ways: by scientific name, by common name, by genus."""
    text = resources.files("birdsearch.indexer.data").joinpath(BIRD_TABLE).read_text(encoding="utf-8")
    rows = csv.DictReader(text.splitlines())
    return lookups(TableRow(r["scientific"], r["common"], r["order"], r["family"]) for r in rows)


def species_tables(paths: Iterable[str | Path]) -> Lookups:
    """The given world checklists, then the bundled table, as one set of lookups (earlier wins)."""
    entries: list[TableRow] = []
    for path in paths:
        world = read_world_list(path)
        if world is None:
            raise ConfigError(
                f"species table {path} is in none of the published layouts --taxa reads (the eBird taxonomy "
                "CSV, the eBird/Clements checklist CSV, the IOC master list as CSV); give other taxonomy "
                "as manifest columns: common_name, genus, family, order"
            )
        entries += [
            TableRow(t.scientific, t.common, t.order, t.family, key)
            for t, key in zip(world.taxa, world.keys, strict=True)
        ]
    entries += bird_table()[0].values()
    # A species takes its code from whichever table has one (the IOC list has none, eBird's does).
    codes: dict[str, str] = {}
    for entry in entries:
        if entry.code:
            codes.setdefault(normalise_name(entry.scientific), entry.code)
    return lookups(replace(e, code=e.code or codes.get(normalise_name(e.scientific), "")) for e in entries)


def looks_binomial(name: str) -> bool:
    """'Genus epithet' (optionally a subspecies), capitalised as scientific names are."""
    return bool(
        re.fullmatch(r"[A-Z][a-z]+ [a-z\-]+( [a-z\-]+)?", re.sub(r"\s+", " ", name.replace("_", " ").strip()))
    )


def split_label(label: str) -> tuple[str, str]:
    """A label to (name, common name): handles 'Genus species_Common Name' (BirdNET's style)."""
    if "_" in label:
        left, _, right = label.rpartition("_")
        if looks_binomial(left) and right[:1].isupper():
            return left, right
    return label.replace("_", " ").strip(), ""


class TaxonomyResolver:
    """Resolves gallery labels, remembering each label and warning once per unknown one."""

    def __init__(self, tables: Iterable[str | Path] = ()) -> None:
        self.tables = tuple(tables)
        self.lookups = species_tables(self.tables) if self.tables else bird_table()
        self.cache: dict[tuple, SpeciesRecord] = {}
        self.unknown: set[str] = set()

    def resolve(self, label: str, given: dict[str, str] | None = None) -> SpeciesRecord:
        """Resolve a species label; ``given`` holds manifest columns (common_name, genus, family, ...)."""
        given = {k: v for k, v in (given or {}).items() if v}
        key = (label, tuple(sorted(given.items())))
        if key not in self.cache:
            self.cache[key] = self._resolve(label, given)
        return self.cache[key]

    def _resolve(self, label: str, given: dict[str, str]) -> SpeciesRecord:
        by_scientific, by_common, by_genus = self.lookups
        name, label_common = split_label(given.get("taxonomy_species") or label)
        row = by_scientific.get(normalise_name(name)) or by_common.get(normalise_name(name))
        if row is None and label_common:
            row = by_common.get(normalise_name(label_common))
        scientific = row.scientific if row else name
        genus_row = row or (
            by_genus.get(normalise_name(scientific.split()[0])) if looks_binomial(scientific) else None
        )
        has_manifest_taxonomy = bool(given.get("family") or given.get("order"))
        resolved_by = (
            "manifest" if has_manifest_taxonomy else "table" if row else "genus" if genus_row else "unknown"
        )
        record = SpeciesRecord(  # image_count stays 0: the pipeline counts images per species
            scientific=scientific,
            common=given.get("common_name") or (row.common if row else "") or label_common,
            kingdom=given.get("kingdom") or BIRD_LINEAGE[0],
            phylum=given.get("phylum") or BIRD_LINEAGE[1],
            klass=given.get("class") or BIRD_LINEAGE[2],
            order=given.get("order") or (genus_row.order if genus_row else ""),
            family=given.get("family") or (genus_row.family if genus_row else ""),
            genus=given.get("genus") or (scientific.split()[0] if looks_binomial(scientific) else ""),
            resolved_by=resolved_by,
            code=given.get("species_code") or (row.code if row else ""),
        )
        if row is None:
            self.warn_once(label, record)
        return record

    def warn_once(self, label: str, record: SpeciesRecord) -> None:
        """One warning per label found in no species table, naming the fields it is indexed without."""
        lacking = [name for name, value in
                   (("common name", record.common), ("genus", record.genus), ("family", record.family),
                    ("order", record.order)) if not value]  # fmt: skip
        if not lacking or label in self.unknown:
            return
        self.unknown.add(label)
        tables = ", ".join(str(t) for t in self.tables) + (", " if self.tables else "")
        log.warning(
            "species %r is in no species table (%sthe bundled bird table); it is indexed without its %s "
            "(give them as manifest columns common_name, genus, family, order, or pass --taxa with the "
            "eBird/Clements or IOC world list)",
            label, tables, ", ".join(lacking),
        )  # fmt: skip


def parse_taxonomy_string(text: str) -> dict[str, str]:
    """'Animalia;Chordata;Aves;Anseriformes;Anatidae;Branta;canadensis' to named ranks (SSW60's style)."""
    parts = [p.strip() for p in re.split(r"[;|>]", text or "") if p.strip()]
    if len(parts) < 7:
        return {}
    ranks = dict(zip(("kingdom", "phylum", "class", "order", "family", "genus"), parts[:6], strict=True))
    ranks["taxonomy_species"] = f"{parts[5]} {parts[6]}"
    return ranks
