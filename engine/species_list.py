"""Species lists: keep only the species plausible at a site, as BirdNET's tools make such lists.

A list file holds one species a line, in either of two spellings (mixed freely):

- a scientific name: ``Turdus migratorius``;
- BirdNET's label, ``Scientific name_Common name``: ``Turdus migratorius_American Robin``. Lists
  written by BirdNET-Analyzer's species tool (by location and week) and its labels files use it, so
  they work as they are.

Blank lines and lines starting with ``#`` are skipped. A folder stands for the ``species_list.txt``
inside it, as BirdNET-Analyzer's ``--slist`` reads a folder. Names are matched against an index's
species case- and space-insensitively by scientific name, then by common name (taxonomies rename
species; common names move less).

A regional list names many species a gallery lacks, so by default such names are skipped with one
warning that lists them with the nearest names the index has (a typo shows there); ``strict``
refuses the list instead, as BirdNET-Analyzer's ``--strict`` does. A list that leaves no species at
all is always refused: an empty filter would let every species through.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from birdsearch.errors import ConfigError
from birdsearch.model.names import normalise_name

log = logging.getLogger(__name__)

FOLDER_LIST_NAME = "species_list.txt"  # the list a folder stands for (BirdNET-Analyzer's name)
MAX_LIST_BYTES = 4 * 2**20  # BirdNET's global labels file (6,522 species) is about 200 KB
SUGGESTIONS = 3  # nearest names offered for an unknown one
SIMILARITY_CUTOFF = 0.6  # difflib ratio below which a name is not offered
SHOWN_UNKNOWN = 20  # unknown names listed in a message, each with its nearest names
STRICT_HINT = "Fix the spelling, or leave out --strict to skip the species the index lacks"


class UnknownSpeciesError(ConfigError):
    """A species list names species that the index does not hold."""

    code = "unknown_species"


@dataclass(frozen=True)
class ListedSpecies:
    """One line of a species list."""

    scientific: str  # as written, whitespace normalised
    common: str  # the common name after BirdNET's underscore, "" when the line has none
    line: int  # 1-based line number in the file, for messages


def parse_species_list(text: str, source: str = "species list") -> list[ListedSpecies]:
    """The species named in ``text``; ConfigError when it names none."""
    entries: list[ListedSpecies] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        scientific, _, common = line.partition("_")
        scientific, common = " ".join(scientific.split()), " ".join(common.split())
        if not scientific:
            raise ConfigError(f"{source}, line {number}: {raw!r} has no scientific name before the '_'")
        entries.append(ListedSpecies(scientific, common, number))
    if not entries:
        raise ConfigError(
            f"{source} names no species: write one scientific name (or BirdNET's "
            "'Scientific name_Common name') a line"
        )
    return entries


def list_file(path: str | Path) -> Path:
    """The list file ``path`` names: the file itself, or a folder's ``species_list.txt``."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return path
    if not (path / FOLDER_LIST_NAME).is_file():
        raise ConfigError(
            f"species list folder {path} holds no {FOLDER_LIST_NAME} (a folder stands for the "
            f"{FOLDER_LIST_NAME} in it, as in BirdNET-Analyzer); name the list file instead"
        )
    return path / FOLDER_LIST_NAME


def read_species_list(path: str | Path) -> list[ListedSpecies]:
    """Read and parse a species list file, or a folder's ``species_list.txt`` (UTF-8, BOM or not)."""
    path = list_file(path)
    try:
        size = path.stat().st_size
        if size > MAX_LIST_BYTES:
            raise ConfigError(
                f"species list {path} is {size / 2**20:.1f} MiB, above the {MAX_LIST_BYTES / 2**20:g} MiB "
                "a list of the world's birds needs; is it the right file?"
            )
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read species list {path}: {e.strerror or e}") from e
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"species list {path} is not UTF-8 text (byte {e.start}); save it as UTF-8, one species a line"
        ) from e
    if "\0" in text:
        raise ConfigError(f"species list {path} holds binary data; it must be text, one species a line")
    return parse_species_list(text, f"species list {path}")


def nearest(name: str, candidates: Iterable[str]) -> list[str]:
    """Up to ``SUGGESTIONS`` candidates closest to ``name`` (difflib's ratio on folded names)."""
    by_key: dict[str, str] = {}
    for candidate in candidates:
        by_key.setdefault(normalise_name(candidate), candidate)
    keys = difflib.get_close_matches(
        normalise_name(name), list(by_key), n=SUGGESTIONS, cutoff=SIMILARITY_CUTOFF
    )
    return [by_key[key] for key in keys]


def resolve_species_list(
    entries: Sequence[ListedSpecies],
    species: Sequence[Any],
    strict: bool = False,
    index: str = "the index",
    hint: str = "",
) -> list[str]:
    """The index's scientific names for the listed species, in list order, without repeats.

    Args:
        entries: the parsed list.
        species: the index's species records (``scientific`` and ``common`` fields).
        strict: refuse a list that names species the index lacks; by default they are skipped, with
            one warning that lists them and their nearest names.
        index: how to name the index in messages.
        hint: what the user can do about unknown names, appended to the message (an option to give).

    Raises UnknownSpeciesError naming each unknown species with its nearest names when ``strict``,
    and whenever no listed species is in the index.
    """
    by_scientific = {normalise_name(r.scientific): r.scientific for r in species}
    by_common = {normalise_name(r.common): r.scientific for r in species if r.common}
    resolved: dict[str, None] = {}  # ordered set
    unknown: list[ListedSpecies] = []
    for entry in entries:
        name = by_scientific.get(normalise_name(entry.scientific))
        if name is None and entry.common:
            name = by_common.get(normalise_name(entry.common))
            if name is not None:
                log.info("species list line %d: %s matched %s by its common name %r",
                         entry.line, entry.scientific, name, entry.common)  # fmt: skip
        if name is None:
            unknown.append(entry)
        else:
            resolved[name] = None
    if not resolved:
        raise UnknownSpeciesError(
            f"no species of the list is in {index}, which holds {len(species)} species: "
            + unknown_listing(unknown, species)
        )
    if unknown and strict:
        raise UnknownSpeciesError(
            f"{len(unknown)} of {len(entries)} species of the list are not in {index}: "
            + unknown_listing(unknown, species) + (f". {hint}" if hint else "")
        )  # fmt: skip
    if unknown:
        log.warning("species list: %d of %d species are not in %s and are skipped: %s%s", len(unknown),
                    len(entries), index, unknown_listing(unknown, species), f". {hint}" if hint else "")  # fmt: skip
    return list(resolved)


def unknown_listing(unknown: Sequence[ListedSpecies], species: Sequence[Any]) -> str:
    """'line 3: 'Turdus migratorious' (nearest: Turdus migratorius); ...' for the first unknown names."""
    names = [r.scientific for r in species] + [r.common for r in species if r.common]
    shown = []
    for entry in unknown[:SHOWN_UNKNOWN]:
        close = nearest(entry.scientific, names) + (nearest(entry.common, names) if entry.common else [])
        close = list(dict.fromkeys(close))[:SUGGESTIONS]
        hint = f" (nearest: {', '.join(close)})" if close else " (nothing close)"
        shown.append(f"line {entry.line}: {entry.scientific!r}{hint}")
    more = f"; and {len(unknown) - SHOWN_UNKNOWN} more" if len(unknown) > SHOWN_UNKNOWN else ""
    return "; ".join(shown) + more
