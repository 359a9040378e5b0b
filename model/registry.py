"""What code above the core plugs in by name: model spec sources and data sets.

The core resolves ``hf-hub:`` and ``local-dir:`` model specs itself and names nothing else. A world
that brings its own models and data (the demo's ``toy``) registers them from above, and the core
hands it the part after the name: ``toy:small`` asks the ``toy`` source for ``small``. The console
script registers the toy world once at start (``birdsearch.toy.plugin.register``).

A process started without the console script (a uvicorn worker, a Ray actor, a test) finds the
same sources through ``BIRDSEARCH_PLUGINS``: comma-separated modules, each with a ``register()``
function, imported the first time a name is missing. ``announce`` adds a module to that variable,
so that the processes a registered process starts register it too (the way pytest reads
``PYTEST_PLUGINS``).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from birdsearch.errors import ConfigError

log = logging.getLogger(__name__)

PLUGINS_ENV = "BIRDSEARCH_PLUGINS"
NAME = re.compile(r"[a-z][a-z0-9_-]*")  # what may come before the ':' of a spec

T = TypeVar("T")
_loaded: set[str] = set()  # plug-in modules already imported by load_plugins


class Registry(Generic[T]):
    """Named entries that plug-ins register; a miss first loads the plug-ins named in the environment."""

    def __init__(self, what: str, builtin: tuple[str, ...] = ()):
        self.what = what  # "model spec source", "data set": for messages
        self.builtin = builtin  # names the core handles itself, listed in messages, never registered
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> None:
        """Add (or replace: registering twice is harmless) the entry called ``name``."""
        if not NAME.fullmatch(name) or name in self.builtin:
            raise ConfigError(
                f"cannot register {self.what} {name!r}: a name is lower-case letters, digits, '-' or '_' "
                f"and not one of {', '.join(self.builtin) or 'the built-in ones'}"
            )
        self._entries[name] = entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def find(self, name: str) -> T | None:
        """The entry called ``name``, or None (after loading the environment's plug-ins)."""
        if name not in self._entries:
            load_plugins()
        return self._entries.get(name)

    def registered(self) -> list[tuple[str, T]]:
        """(name, entry) of every registered entry, by name."""
        load_plugins()
        return sorted(self._entries.items(), key=lambda item: item[0])

    def names(self) -> list[str]:
        """The built-in names, then the registered ones."""
        return [*self.builtin, *(name for name, _ in self.registered())]

    def get(self, name: str) -> T:
        """The entry called ``name``; raises ConfigError naming the known ones."""
        entry = self.find(name)
        if entry is None:
            raise ConfigError(f"unknown {self.what} {name!r}: {self.known()}")
        return entry

    def known(self) -> str:
        """A sentence listing the known names and how to add one, for error messages."""
        return (
            f"known {self.what}s are {', '.join(self.names()) or 'none'} (a plug-in registers more: "
            f"set {PLUGINS_ENV} to its module)"
        )


def load_plugins() -> None:
    """Import each module named in ``BIRDSEARCH_PLUGINS`` (once) and call its ``register()``."""
    for module_name in os.environ.get(PLUGINS_ENV, "").split(","):
        module_name = module_name.strip()
        if not module_name or module_name in _loaded:
            continue
        _loaded.add(module_name)  # before register(), which may look names up itself
        try:
            register = importlib.import_module(module_name).register
        except (ImportError, AttributeError) as e:
            _loaded.discard(module_name)  # say so again next time, rather than "unknown"
            raise ConfigError(
                f"{PLUGINS_ENV} names {module_name!r}, which cannot be loaded or has no register(): {e}. "
                f"Fix the module name or remove it from {PLUGINS_ENV}"
            ) from e
        log.debug("loading plug-in %s", module_name)
        register()


def announce(module_name: str) -> None:
    """Name a registering module in ``BIRDSEARCH_PLUGINS``, so that child processes register it too."""
    _loaded.add(module_name)
    present = [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    if module_name not in present:
        os.environ[PLUGINS_ENV] = ",".join([*present, module_name])


# ---- data sets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataBundle:
    """A registered data set on disk: the manifests that distillation and evaluation read, and the
    models that go with it. Manifests are in the distillation format (path, species, [split, ...])."""

    name: str  # names reports, e.g. "toy-small"
    taxa: Path  # species table (scientific_name, common_name, order, family, ...)
    train_manifest: Path  # labelled recordings to distil on: split "train" or "val" per row
    query_manifest: Path  # held-out query recordings: every row is a test query
    gallery_manifest: Path | None = None  # photos to search (path, species, ...)
    soundscape_annotations: Path | None = None  # BirdSet-style: file, start, end, species
    soundscape_dir: Path | None = None  # the recordings those annotations describe
    models: dict[str, str] = field(default_factory=dict)  # default specs: "teacher", "student", ...
    facts: dict[str, str] = field(default_factory=dict)  # recorded in reports


class DataSource(Protocol):
    def __call__(self, variant: str | None, progress: bool = True) -> DataBundle:
        """The data set named ``NAME:variant`` (variant None for plain ``NAME``), built if needed."""
        ...


DATA_SETS: Registry[DataSource] = Registry("data set")


def register_data_set(name: str, source: DataSource) -> None:
    """Make ``NAME[:VARIANT]`` a data set that ``evaluate --dataset`` and ``distill --manifest`` accept."""
    DATA_SETS.register(name, source)


def data_set(spec: str, progress: bool = True) -> DataBundle | None:
    """The registered data set that ``spec`` (``NAME`` or ``NAME:VARIANT``) names, or None if none does."""
    name, _, variant = spec.partition(":")
    source = DATA_SETS.find(name) if NAME.fullmatch(name) else None
    return None if source is None else source(variant or None, progress=progress)
