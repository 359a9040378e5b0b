"""Species names to taxonomy; galleries listed; the index type rule."""

import numpy as np
import pytest

from birdsearch.errors import ConfigError
from birdsearch.indexer.faiss_index import IndexOptions, choose_index_type, ivf_lists, recall_at_k
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
    options = IndexOptions(exact_max=1000, memory_budget_bytes=10_000 * 768 * 4 + 10_000 * 256)
    assert choose_index_type(1000, 768, options) == "flat"
    assert choose_index_type(10_000, 768, options) == "hnsw"
    assert choose_index_type(10_001, 768, options) == "ivf"  # vectors fit, the graph does not
    assert choose_index_type(20_000, 768, options) == "ivfpq"
    assert choose_index_type(5, 768, IndexOptions(index_type="ivf")) == "ivf"
    with pytest.raises(ConfigError, match="unknown index type"):
        choose_index_type(5, 8, IndexOptions(index_type="lsh"))
    assert ivf_lists(1_000_000) == 4000 and ivf_lists(100) == 2 and ivf_lists(10) == 1
    assert recall_at_k(np.array([[1, 2, 3]]), np.array([[3, 2, 9]]), k=3) == pytest.approx(2 / 3)
    assert recall_at_k(np.array([[1, -1]]), np.array([[1, -1]]), k=2) == 1.0
