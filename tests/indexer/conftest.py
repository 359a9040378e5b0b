"""Fixtures for the indexer's tests: a tiny random teacher and galleries built from real photos."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_TEACHER_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}

# Real photos by species folder (tests/data): every odd image, and the plain ones.
REAL_GALLERY = {
    "Ara ararauna": [
        "images/kodim23_macaws.png",
        "derived/kodim23_cmyk.jpg",
        "derived/kodim23_grayscale.jpg",
    ],
    "Ara chloropterus": ["derived/kodim23_exif_orientation6.jpg"],
    "Poecile atricapillus": ["derived/chickadee_rgba_alpha.png"],
    "Junco hyemalis": ["images/phoebe_Junco_hyemalis.jpg", "derived/junco_palette_P.png"],
    "Loxodonta africana": ["images/ctai_NONBIRD_elephants_truncated.jpg"],
    "Leiothlypis celata": ["images/phoebe_Leiothlypis_celata.jpg"],
    "Melozone crissalis": ["images/phoebe_Melozone_crissalis.jpg"],
    "Passer domesticus": ["images/phoebe_Passer_domesticus.jpg"],
    "Poecile rufescens": ["images/phoebe_Poecile_rufescens.jpg"],
    "Sayornis nigricans": ["images/phoebe_Sayornis_nigricans.jpg"],
    "Setophaga coronata": ["images/phoebe_Setophaga_coronata.jpg"],
    "Setophaga townsendi": ["images/phoebe_Setophaga_townsendi.jpg"],
    "Spinus psaltria": ["images/phoebe_Spinus_psaltria.jpg"],
    "Zonotrichia leucophrys": ["images/phoebe_Zonotrichia_leucophrys.jpg"],
}


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory) -> Path:
    """A small random open_clip CLIP saved in the publisher's format (loads in well under a second)."""
    from birdsearch.model.standins import build_teacher, save_teacher

    directory = tmp_path_factory.mktemp("tiny-teacher")
    return save_teacher(build_teacher(TINY_TEACHER_CFG, seed=0), directory, TINY_TEACHER_CFG)


@pytest.fixture(scope="session")
def tiny_teacher_spec(tiny_teacher_dir) -> str:
    return f"local-dir:{tiny_teacher_dir}"


@pytest.fixture
def real_gallery(real_fixtures, tmp_path) -> Path:
    """A folder gallery of the real photos, the odd ones included, plus a text file and a 16-bit PNG."""
    root = tmp_path / "gallery"
    for species, files in REAL_GALLERY.items():
        folder = root / species.replace(" ", "_")
        folder.mkdir(parents=True)
        for name in files:
            shutil.copy(real_fixtures / name, folder / Path(name).name)
    (root / "Junco_hyemalis" / "notes.txt").write_text("not a photo")
    sixteen = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    Image.fromarray(sixteen).save(root / "Junco_hyemalis" / "gradient16.png")
    (root / "README.md").write_text("a stray file at the top")
    return root


@pytest.fixture(scope="session")
def synthetic_photos():
    """``synthetic_photos(folder, count, seed)``: write distinct small JPEGs, return their paths."""
    return write_synthetic_photos


def write_synthetic_photos(folder: Path, count: int, seed: int = 0, size: int = 48) -> list[Path]:
    """Distinct small JPEGs (random colour blocks), for tests that need many images fast."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(pixels).resize((size, size), Image.Resampling.NEAREST)
        paths.append(folder / f"img{i:04d}.jpg")
        img.save(paths[-1], quality=90)
    return paths


@pytest.fixture(scope="session")
def write_simple_index():
    """``write_simple_index(root, vectors, species, ...)``: publish a small exact index of known content."""
    return publish_simple_index


def publish_simple_index(
    root: Path,
    vectors: np.ndarray,
    species: list[str],
    species_embeddings: np.ndarray | None = None,
    teacher: dict | None = None,
    records: list[dict] | None = None,
    index_type: str = "flat",
    options=None,
):
    """Write and publish an exact index from vectors and labels, without a gallery or a model.

    ``species[i]`` labels ``vectors[i]``; ``species_embeddings`` (S, D) is in sorted species order
    (random unit vectors when omitted; an approximate ``index_type`` is tuned on them); ``records[i]``
    overrides ImageRow fields; ``options`` (IndexOptions) replace ``index_type``.
    """
    import hashlib
    import json
    from dataclasses import asdict

    from birdsearch.indexer.faiss_index import IndexOptions, build_index
    from birdsearch.indexer.store import ImageRow, IndexRoot, SpeciesRecord
    from birdsearch.indexer.writer import VersionContent, new_staging_dir, publish, write_version_files

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    names = sorted(set(species))
    rows = []
    for i, label in enumerate(species):
        row = ImageRow(key=f"{label}/{i:06d}.jpg", species=label, width=1, height=1, content_hash=f"{i:064x}")
        row.genus = label.split()[0] if " " in label else ""
        rows.append(ImageRow(**{**asdict(row), **(dict(records[i]) if records else {})}))
    taxa = [
        SpeciesRecord(name, genus=name.split()[0], image_count=species.count(name), resolved_by="unknown")
        for name in names
    ]
    if species_embeddings is None:
        species_embeddings = np.random.default_rng(0).standard_normal((len(names), vectors.shape[1]))
        species_embeddings /= np.linalg.norm(species_embeddings, axis=1, keepdims=True)
    tuning = {"species_text": np.asarray(species_embeddings, np.float32)}
    staging = new_staging_dir(root)
    options = options or IndexOptions(index_type=index_type, recall_queries=200)
    built = build_index(vectors, options, tuning, staging)
    content = VersionContent(
        vectors=vectors,
        images=rows,
        species=taxa,
        species_embeddings=np.asarray(species_embeddings, np.float32),
        index=built.index,
        manifest={
            "teacher": teacher
            or {"id": "test", "dim": vectors.shape[1], "weights_sha256": "", "preprocess": {}},
            **built.manifest(options.memory_budget_bytes),
            "source_hash": hashlib.sha256(json.dumps(list(species)).encode()).hexdigest(),
            "species_text": {"format": "taxon_com", "templates": "openai"},
        },
    )
    write_version_files(staging, content)
    return IndexRoot(root).open(publish(root, staging))
