"""Toy-world fixtures: a private cache for the session, the tiny world's data and the small world."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from birdsearch.toy.config import tiny_config


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache root private to this test session (``toy`` specs resolve through it)."""
    root = tmp_path_factory.mktemp("toy-cache")
    previous = os.environ.get("BIRDSEARCH_CACHE")
    os.environ["BIRDSEARCH_CACHE"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("BIRDSEARCH_CACHE", None)
    else:
        os.environ["BIRDSEARCH_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_world(toy_cache: Path):
    """The tiny world's data (no models), the students' training recordings included."""
    from birdsearch.toy.world import DATA_STAGES, ensure_world

    return ensure_world(tiny_config(), stages=DATA_STAGES, progress=False)


@pytest.fixture(scope="session")
def small_world(toy_cache: Path):
    """The "small" preset, models and metrics included (what ``toy:small`` specs load)."""
    from birdsearch.toy.world import ensure_world

    return ensure_world("small", progress=False)
