"""Shared test settings: never reach the Hugging Face Hub, keep caches inside the test session, and
plug the toy world in."""

import os
from pathlib import Path

import pytest

from birdsearch.toy import plugin as toy_plugin

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `toy` model specs and data sets resolve in tests as under the console script, which registers the
# toy world at start (cheap: nothing is built until a toy spec is used).
toy_plugin.register()

# Real recordings and photos, committed with their licenses (tests/data/ATTRIBUTION.md).
REAL_FIXTURES = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def real_fixtures() -> Path:
    """tests/data: real recordings (audio/), photos (images/) and conversions of them (derived/)."""
    return REAL_FIXTURES
