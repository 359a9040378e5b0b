"""Photos in the teacher's space: a gallery manifest (path, species) embedded by the teacher.

What the evaluation scores queries against when it has no index (``birdsearch.model.evaluate.gallery``
reads an index), and what ``birdsearch distill --val-gallery`` chooses an encoder's default query
mode with: the photos a query's vector is searched among, each with its species.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from birdsearch.errors import ConfigError, ImageError
from birdsearch.model.names import Taxon, normalise_name
from birdsearch.model.tables import pick_column, read_table

log = logging.getLogger(__name__)


@dataclass
class GalleryVectors:
    """(N, D) unit image embeddings in the teacher's space, and each image's species name."""

    vectors: np.ndarray
    species: list[str]  # scientific name (or the gallery's label) per image
    ids: list[str]  # image key or path per image
    facts: dict[str, Any] = field(default_factory=dict)  # where it came from, which teacher

    def labels(self, taxa: list[Taxon]) -> np.ndarray:
        """(N,) index of each image's species in ``taxa`` (matched by scientific or common name); -1 else."""
        lookup: dict[str, int] = {}
        for i, taxon in enumerate(taxa):
            lookup.setdefault(normalise_name(taxon.scientific), i)
            if taxon.common:
                lookup.setdefault(normalise_name(taxon.common), i)
        labels = np.array([lookup.get(normalise_name(s), -1) for s in self.species], dtype=np.int64)
        outside = int((labels < 0).sum())
        if outside:
            log.info(
                "%d of %d gallery images are of species outside the evaluation (distractors)",
                outside,
                len(labels),
            )
        return labels


def load_image(path: str) -> Any:
    """A photo as upright RGB (EXIF orientation applied)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            return ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError) as e:
        raise ImageError(f"{path}: cannot read the image ({e})") from e


def from_manifest(path: str | Path, teacher: Any, batch_size: int = 64) -> GalleryVectors:
    """Embed the photos of a gallery manifest (path, species) with ``teacher``; unreadable ones are skipped."""
    path = Path(path)
    frame = read_table(path)
    path_col = pick_column(frame.columns, ("path", "file", "filepath", "image"), "image path", str(path))
    species_col = pick_column(frame.columns, ("species", "scientific_name", "label"), "species", str(path))
    items = []
    for row in frame.to_dict("records"):
        image = Path(str(row[path_col]))
        items.append((str(image if image.is_absolute() else path.parent / image), str(row[species_col])))
    vectors, species, ids, skipped = [], [], [], 0
    for start in range(0, len(items), batch_size):
        batch, names, keys = [], [], []
        for image_path, name in items[start : start + batch_size]:
            try:
                batch.append(load_image(image_path))
            except ImageError as e:
                log.warning("skipped: %s", e)
                skipped += 1
                continue
            names.append(name)
            keys.append(image_path)
        if batch:
            vectors.append(teacher.embed_images(batch).numpy())
            species += names
            ids += keys
    if not vectors:
        raise ConfigError(f"{path}: no readable gallery images")
    facts = {"source": "manifest", "path": str(path), "skipped": skipped, "teacher": teacher.describe()}
    return GalleryVectors(np.concatenate(vectors).astype(np.float32), species, ids, facts)
