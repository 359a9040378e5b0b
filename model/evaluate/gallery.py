"""The image side of the evaluation: teacher image embeddings and each photo's species.

From an index built by ``birdsearch index`` (the vectors the service searches), or, for small
galleries and tests, by embedding a gallery manifest (path, species) with the teacher here
(``birdsearch.model.gallery``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from birdsearch.model.gallery import GalleryVectors, from_manifest

__all__ = ["GalleryVectors", "from_index", "from_manifest"]


def from_index(path: str | Path) -> GalleryVectors:
    """The published version of an index root (``birdsearch index --out PATH``)."""
    from birdsearch.indexer.store import IndexRoot

    version = IndexRoot(path).open_current()
    vectors = np.asarray(version.vectors(), dtype=np.float32)
    records = version.images(list(range(version.count)))
    facts = {"source": "index", "path": str(path), "version": version.name, "teacher": version.teacher}
    return GalleryVectors(vectors, [r.species for r in records], [r.key for r in records], facts)
