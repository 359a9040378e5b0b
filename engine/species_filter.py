"""Species lists in the query service: the server's (``BIRDSEARCH_SPECIES_LIST``) and a request's own.

A list is the text of a species list file (plain scientific names, or BirdNET's
``Scientific name_Common name`` lines; ``birdsearch.engine.species_list`` parses and resolves it).
It is resolved against the index version a request is served from, so a hot reload that adds or
drops species changes what it allows:

- the server's list is a site's list made once, with species a gallery may lack: those are
  skipped (logged once per index version);
- a request's own list (the ``species_list`` form field) wins over the server's; a name in it that
  the index lacks is a 422 that suggests the nearest names, as a typo should be.

Only photos of the listed species are searched; the taxon filters narrow further.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from birdsearch.engine.errors import BadParameterError
from birdsearch.engine.species_list import (
    ListedSpecies,
    parse_species_list,
    read_species_list,
    resolve_species_list,
)
from birdsearch.errors import ConfigError


class SpeciesFilter:
    """The server's species list (read once at start) and its resolution per served index version."""

    def __init__(self, path: str):
        self.entries: list[ListedSpecies] | None = read_species_list(path) if path else None
        self.path = path
        self._ids: dict[str, np.ndarray] = {}  # index version name -> allowed image ids
        self._lock = threading.Lock()

    def allowed(self, served: Any, request_list: str | None) -> np.ndarray | None:
        """Image ids the request may see by species list (None: no list applies)."""
        if request_list:
            try:
                entries = parse_species_list(request_list, "species_list")
                names = resolve_species_list(entries, served.species, strict=True, index=f"index {served.name}",
                                             hint="send only the species the index holds (GET /species)")  # fmt: skip
            except ConfigError as e:
                raise BadParameterError(f"species_list: {e}") from e
            return served.version.ids_for(species=names)
        if self.entries is None:
            return None
        with self._lock:
            if served.name not in self._ids:
                names = resolve_species_list(self.entries, served.species, strict=False,
                                             index=f"index {served.name} (BIRDSEARCH_SPECIES_LIST {self.path})")  # fmt: skip
                self._ids = {served.name: served.version.ids_for(species=names)}
            return self._ids[served.name]


def combine(by_filters: np.ndarray | None, by_list: np.ndarray | None, index: str) -> np.ndarray | None:
    """Ids allowed by both the taxon filters and the species list (None where neither applies)."""
    if by_list is None:
        return by_filters
    allowed = by_list if by_filters is None else np.intersect1d(by_filters, by_list)
    if allowed.size == 0:
        raise BadParameterError(
            f"no image in index {index} is of a listed species that also passes the filters"
        )
    return allowed
