"""Species labels to taxonomy: a gallery says "Turdus_migratorius" or "American Robin", the index
stores the scientific name, common name, genus, family and order.

Sources, in order: taxonomy the gallery's manifest gives; the bundled table of common birds
(``data/birds.csv``, matched by scientific or common name, case-insensitively); the genus of a
binomial found in that table (family and order); otherwise the label is kept as it is, with a
warning, and the image is still indexed.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from birdsearch.indexer.store import SpeciesRecord

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


@lru_cache(maxsize=1)
def bird_table() -> tuple[dict[str, TableRow], dict[str, TableRow], dict[str, TableRow]]:
    """The bundled table indexed three ways: by scientific name, by common name, by genus."""
    text = resources.files("birdsearch.indexer.data").joinpath(BIRD_TABLE).read_text(encoding="utf-8")
    by_scientific, by_common, by_genus = {}, {}, {}
    for row in csv.DictReader(text.splitlines()):
        entry = TableRow(row["scientific"], row["common"], row["order"], row["family"])
        by_scientific[fold(entry.scientific)] = entry
        by_common[fold(entry.common)] = entry
        by_genus.setdefault(fold(entry.scientific.split()[0]), entry)
    return by_scientific, by_common, by_genus


def fold(name: str) -> str:
    """A lookup key: case, underscores, repeated spaces and apostrophe styles do not matter."""
    name = name.replace("_", " ").replace("\u2019", "'").strip().lower()
    return re.sub(r"\s+", " ", name)


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

    def __init__(self) -> None:
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
        by_scientific, by_common, by_genus = bird_table()
        name, label_common = split_label(given.get("taxonomy_species") or label)
        row = by_scientific.get(fold(name)) or by_common.get(fold(name))
        if row is None and label_common:
            row = by_common.get(fold(label_common))
        scientific = row.scientific if row else name
        genus_row = row or (by_genus.get(fold(scientific.split()[0])) if looks_binomial(scientific) else None)
        has_manifest_taxonomy = bool(given.get("family") or given.get("order"))
        resolved_by = (
            "manifest" if has_manifest_taxonomy else "table" if row else "genus" if genus_row else "unknown"
        )
        if resolved_by == "unknown" and label not in self.unknown:
            self.unknown.add(label)
            log.warning(
                "species %r is not in the bundled bird table; it is indexed without family and order "
                "(give them in a manifest: columns family, order)",
                label,
            )
        return SpeciesRecord(  # image_count stays 0: the pipeline counts images per species
            scientific=scientific,
            common=given.get("common_name") or (row.common if row else "") or label_common,
            kingdom=given.get("kingdom") or BIRD_LINEAGE[0],
            phylum=given.get("phylum") or BIRD_LINEAGE[1],
            klass=given.get("class") or BIRD_LINEAGE[2],
            order=given.get("order") or (genus_row.order if genus_row else ""),
            family=given.get("family") or (genus_row.family if genus_row else ""),
            genus=given.get("genus") or (scientific.split()[0] if looks_binomial(scientific) else ""),
            resolved_by=resolved_by,
        )


def parse_taxonomy_string(text: str) -> dict[str, str]:
    """'Animalia;Chordata;Aves;Anseriformes;Anatidae;Branta;canadensis' to named ranks (SSW60's style)."""
    parts = [p.strip() for p in re.split(r"[;|>]", text or "") if p.strip()]
    if len(parts) < 7:
        return {}
    ranks = dict(zip(("kingdom", "phylum", "class", "order", "family", "genus"), parts[:6], strict=True))
    ranks["taxonomy_species"] = f"{parts[5]} {parts[6]}"
    return ranks
