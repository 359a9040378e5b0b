"""Shared test settings: never reach the Hugging Face Hub, keep caches inside the test session."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Real recordings and photos, committed with their licenses (tests/data/ATTRIBUTION.md).
REAL_FIXTURES = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def real_fixtures() -> Path:
    """tests/data: real recordings (audio/), photos (images/) and conversions of them (derived/)."""
    return REAL_FIXTURES
