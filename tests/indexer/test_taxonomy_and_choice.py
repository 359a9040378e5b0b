"""Species names to taxonomy; galleries listed; the index type rule."""

import numpy as np
import pytest

from birdsearch.errors import ConfigError
from birdsearch.indexer.faiss_index import (
    IndexOptions,
    index_plans,
    ivf_lists,
    pq_bits,
    pq_bytes,
    recall_at_k,
)
from birdsearch.indexer.gallery import read_gallery
from birdsearch.indexer.taxonomy import TaxonomyResolver, parse_taxonomy_string


def test_labels_resolve_by_scientific_common_and_genus(caplog):
    resolver = TaxonomyResolver()
    for label in ("Turdus_migratorius", "american robin", "Turdus migratorius_American Robin"):
        taxon = resolver.resolve(label)
        assert (taxon.scientific, taxon.common, taxon.family, taxon.order, taxon.resolved_by) == (
            "Turdus migratorius", "American Robin", "Turdidae", "Passeriformes", "table",
        )  # fmt: skip
    fieldfare = resolver.resolve("Turdus pilaris")
    assert (fieldfare.family, fieldfare.resolved_by, fieldfare.common) == ("Turdidae", "genus", "")
    assert resolver.resolve("Townsend\u2019s Warbler").scientific == "Setophaga townsendi"
    with caplog.at_level("WARNING"):
        unknown = resolver.resolve("mystery bird")
        resolver.resolve("mystery bird")
    assert (unknown.scientific, unknown.family, unknown.resolved_by) == ("mystery bird", "", "unknown")
    assert sum("mystery bird" in r.message for r in caplog.records) == 1  # warned once
    given = parse_taxonomy_string("Animalia;Chordata;Aves;Anseriformes;Anatidae;Branta;canadensis")
    goose = resolver.resolve("whatever", given)
    assert (goose.scientific, goose.order, goose.resolved_by) == (
        "Branta canadensis",
        "Anseriformes",
        "manifest",
    )


def test_gallery_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_gallery(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="lists no images"):
        read_gallery(tmp_path / "empty")
    bad = tmp_path / "bad.csv"
    bad.write_text("file_name,bird\nx.jpg,Turdus migratorius\n")
    with pytest.raises(ConfigError, match="no path or species column"):
        read_gallery(bad)
    (tmp_path / "g" / "Junco hyemalis" / ".hidden").mkdir(parents=True)
    (tmp_path / "g" / "Junco hyemalis" / ".hidden" / "x.jpg").write_bytes(b"x")
    (tmp_path / "g" / "Junco hyemalis" / "sub").mkdir()
    (tmp_path / "g" / "Junco hyemalis" / "sub" / "a.jpg").write_bytes(b"x")
    gallery = read_gallery(tmp_path / "g")
    assert [(i.key, i.label) for i in gallery.items] == [("Junco hyemalis/sub/a.jpg", "Junco hyemalis")]


def test_index_type_rule():
    def picked(n, gib, **options):
        first = index_plans(n, 768, IndexOptions(memory_budget_bytes=int(gib * 2**30), **options))[0]
        return first.factory, first.storage

    # The picks docs/indexing.md quotes: exact while small, IVF over the most precise codes that fit
    # with the build's sample and blocks, IVF-PQ re-ranked from 8-bit codes on disk past that.
    assert picked(100_000, 8) == ("Flat", "float32")
    assert picked(1_000_000, 8) == ("IVF4000,Flat", "float32")
    assert picked(10_000_000, 16) == ("IVF4096,SQ8", "sq8")  # 7.2 GiB of codes, 11.1 GiB at the build's peak
    assert picked(10_000_000, 8) == ("IVF4096,PQ64", "sq8")  # 0.7 GiB in memory, its 8-bit store on disk
    assert picked(10_000_000, 16, storage="float32") == (
        "IVF4096,PQ64",
        "float32",
    )  # re-ranks from vectors.npy
    assert picked(1_000_000, 8, index_type="hnsw") == ("HNSW32", "float32")
    assert picked(5, 8, index_type="ivf")[0] == "IVF1,Flat"
    assert [p.kind for p in index_plans(1, 768, IndexOptions())] == ["flat"]  # nothing to train on
    with pytest.raises(ConfigError, match="unknown index type"):
        IndexOptions(index_type="lsh")
    with pytest.raises(ConfigError, match="memory budget must be positive"):
        IndexOptions(memory_budget_bytes=0)
    assert ivf_lists(1_000_000) == 4000 and ivf_lists(10_000_000) == 4096 and ivf_lists(100) == 2
    assert pq_bytes(768) == 64 and pq_bits(100) == 4 and pq_bits(10_000) == 8
    assert recall_at_k(np.array([[1, 2, 3]]), np.array([[3, 2, 9]]), k=3) == pytest.approx(2 / 3)
    assert recall_at_k(np.array([[1, -1]]), np.array([[1, -1]]), k=2) == 1.0
