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


@pytest.fixture
def umask():
    """``umask(0o027)`` sets this process's umask for the test; the previous one comes back after."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance (2 CPUs) for every Ray test: starting and stopping one takes 3 to 4 s."""
    ray = pytest.importorskip("ray", reason="Ray Data comes with the dev and distributed extras")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
