"""A bird recording in, photographs of the species out; installs as birdsearch.

pyproject.toml maps the top-level folders under this name: ``model/`` is ``birdsearch.model`` (the
two pretrained models and what is built on them), ``indexer/`` is ``birdsearch.indexer`` (photo
gallery to a versioned FAISS index), ``engine/`` is ``birdsearch.engine`` (the query engine: audio
to scored windows and detections), ``service/`` is ``birdsearch.service`` (the HTTP app) and
``analyze/`` is ``birdsearch.analyze`` (folders of recordings to detection tables); this folder
holds the console script, the Python API (``birdsearch.Birdsearch``), the HTTP client, the toy
world and the ground every part stands on (errors, cache paths, CPU count). Each folder's job, and
who may import whom: docs/architecture.md, checked by tests/test_floor_plan.py.
"""

import importlib

__version__ = "0.1.0"
__all__ = ["Birdsearch", "__version__"]

# Names the package root exports, each imported from its module on first use, so that importing
# birdsearch (and `birdsearch --help`) loads no model code.
LAZY_EXPORTS = {"Birdsearch": "birdsearch.api"}


def __getattr__(name: str):
    if name in LAZY_EXPORTS:
        return getattr(importlib.import_module(LAZY_EXPORTS[name]), name)
    raise AttributeError(f"module 'birdsearch' has no attribute {name!r}")
