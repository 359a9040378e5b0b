"""The read side: an index root, its pointer, a version's search and metadata."""

import json
import threading

import faiss
import numpy as np
import pytest

from birdsearch.errors import ConfigError, IndexFormatError
from birdsearch.indexer.search import ShardedSearcher, TorchSearcher, torch_shards
from birdsearch.indexer.store import IndexRoot, IndexVersion, UnknownImageError
from birdsearch.indexer.writer import prune_versions

SPECIES = ["Turdus migratorius", "Junco hyemalis", "Passer domesticus", "Setophaga coronata"]


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def small_index(tmp_path, write_simple_index):
    rng = np.random.default_rng(1)
    vectors = unit(rng, 200, 16)
    labels = [SPECIES[i % 4] for i in range(200)]
    records = [{"family": "Turdidae" if label.startswith("Turdus") else "Other"} for label in labels]
    version = write_simple_index(tmp_path / "idx", vectors, labels, records=records)
    return version, vectors, labels


def test_no_index_yet_explains_what_to_run(tmp_path):
    root = IndexRoot(tmp_path / "missing")
    assert root.current_name() is None
    with pytest.raises(IndexFormatError, match="birdsearch index --gallery"):
        root.open_current()
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexFormatError, match="no CURRENT pointer"):
        IndexRoot(tmp_path / "empty").open_current()


def test_search_matches_exact_faiss_and_pads(small_index):
    version, vectors, _ = small_index
    queries = unit(np.random.default_rng(2), 7, 16)
    reference = faiss.IndexFlatIP(16)
    reference.add(vectors)
    ref_scores, ref_ids = reference.search(queries, 10)
    scores, ids = version.search(queries, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-6)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    scores, ids = version.search(queries[0], 250)
    assert ids.shape == (1, 250) and (ids[0, 200:] == -1).all() and np.isneginf(scores[0, 200:]).all()
    assert set(ids[0, :200]) == set(range(200))


def test_filtered_search_is_exact_over_the_subset(small_index):
    version, vectors, labels = small_index
    subset = version.ids_for(species="Junco hyemalis")
    assert list(subset) == [i for i, s in enumerate(labels) if s == "Junco hyemalis"]
    queries = unit(np.random.default_rng(3), 5, 16)
    scores, ids = version.search(queries, 60, ids=subset)
    expected = np.argsort(-(queries @ vectors[subset].T), axis=1)[:, :50]
    np.testing.assert_array_equal(ids[:, :50], subset[expected])
    assert (ids[:, 50:] == -1).all()
    _, none = version.search(queries, 3, ids=np.array([], dtype=np.int64))
    assert (none == -1).all()
    with pytest.raises(ConfigError, match="outside this index"):
        version.search(queries, 3, ids=np.array([5, 999]))
    with pytest.raises(ConfigError, match=r"expected \(Q, 16\)"):
        version.search(np.zeros((2, 8), np.float32), 3)


def test_metadata_and_taxon_filters(small_index):
    version, _, labels = small_index
    records = version.images([5, 0, 5])
    assert [r.id for r in records] == [5, 0, 5]
    assert records[1].species == labels[0] and records[1].family == "Turdidae"
    with pytest.raises(UnknownImageError, match="image id 200"):
        version.images([200])
    assert list(version.ids_for(family="turdidae")) == list(version.ids_for(species="Turdus migratorius"))
    assert len(version.ids_for(genus="Junco")) == 50
    assert version.ids_for(species=[]).size == 0
    assert len(version.ids_for()) == 200
    species = version.species()
    assert [s.scientific for s in species] == sorted(SPECIES)
    assert all(s.image_count == 50 for s in species)
    names, embeddings = version.species_embeddings()
    assert names == sorted(SPECIES) and embeddings.shape == (4, 16)
    assert version.vectors().shape == (200, 16)


def test_concurrent_readers_get_the_same_answers(small_index):
    version, _, _ = small_index
    queries = unit(np.random.default_rng(4), 32, 16)
    expected = version.search(queries, 5)[1]
    results, errors = [], []

    def worker(seed):
        try:
            for _ in range(20):
                results.append(np.array_equal(version.search(queries, 5)[1], expected))
                version.images(np.arange(seed, seed + 10))
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 160 and all(results)


def assert_same_neighbours(got, expected, vectors, queries, tol=1e-5):
    """Same ids rank by rank, except where two candidates tie within float rounding."""
    np.testing.assert_allclose(got[0], expected[0], rtol=tol, atol=tol)
    for q, rank in zip(*np.nonzero(got[1] != expected[1]), strict=True):
        a, b = got[1][q, rank], expected[1][q, rank]
        assert a >= 0 and b >= 0, f"query {q} rank {rank}: {a} vs {b}"
        assert abs(queries[q] @ vectors[a] - queries[q] @ vectors[b]) < tol


def test_torch_search_equals_cpu_faiss(small_index):
    version, vectors, _ = small_index
    queries = unit(np.random.default_rng(5), 300, 16)
    torch_searcher = TorchSearcher(vectors, "cpu")
    for k, subset in ((10, None), (3, version.ids_for(genus="Passer")), (250, None)):
        expected = version.search(queries, k, ids=subset)
        assert_same_neighbours(torch_searcher.search(queries, k, ids=subset), expected, vectors, queries)
    as_torch = IndexRoot(version.root).open_current(backend="torch")
    assert_same_neighbours(as_torch.search(queries, 4), version.search(queries, 4), vectors, queries)


def test_sharded_search_equals_one_index(small_index):
    """Shards of unequal size, a shard the filter leaves empty, and k above a shard's size."""
    version, vectors, _ = small_index
    queries = unit(np.random.default_rng(8), 50, 16)
    sharded = torch_shards(vectors, 3, ["cpu"])
    uneven = ShardedSearcher([TorchSearcher(vectors[:7]), TorchSearcher(vectors[7:])], [7, 193])
    for k, subset in ((10, None), (5, version.ids_for(genus="Passer")), (120, None), (4, np.array([3, 150]))):
        expected = version.search(queries, k, ids=subset)
        for searcher in (sharded, uneven):
            assert_same_neighbours(searcher.search(queries, k, ids=subset), expected, vectors, queries)
    with pytest.raises(ConfigError, match="one size per shard"):
        ShardedSearcher([TorchSearcher(vectors)], [100, 100])


def test_damaged_or_foreign_versions_are_refused(small_index):
    version, _, _ = small_index
    (version.path / "vectors.npy").write_bytes(b"x")
    with pytest.raises(IndexFormatError, match="damaged"):
        IndexVersion(version.path)
    manifest = json.loads((version.path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (version.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="format_version 99"):
        IndexVersion(version.path)


def test_publish_moves_the_pointer_and_prune_keeps_the_last(tmp_path, write_simple_index):
    rng = np.random.default_rng(6)
    for n in (5, 6, 7, 8):
        write_simple_index(tmp_path, unit(rng, n, 4), ["Junco hyemalis"] * n)
    root = IndexRoot(tmp_path)
    assert root.versions() == ["v0001", "v0002", "v0003", "v0004"]
    assert root.current_name() == "v0004" and root.open_current().count == 8
    assert prune_versions(tmp_path, keep=2) == ["v0001", "v0002"]
    assert root.versions() == ["v0003", "v0004"]


@pytest.mark.gpu
def test_gpu_search_returns_cpu_faiss_neighbours(small_index):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    version, vectors, _ = small_index
    queries = unit(np.random.default_rng(7), 500, 16)
    on_gpu = IndexRoot(version.root).open_current(device="cuda")  # faiss-gpu if installed, else torch
    for k, subset in ((10, None), (5, version.ids_for(genus="Junco"))):
        expected = version.search(queries, k, ids=subset)
        assert_same_neighbours(on_gpu.search(queries, k, ids=subset), expected, vectors, queries)


def test_species_codes_are_stored_and_an_index_written_before_them_reads_as_unknown(
    tmp_path, write_simple_index
):
    import sqlite3

    from birdsearch.indexer.store import METADATA_FILE

    vectors = unit(np.random.default_rng(2), 4, 8)
    version = write_simple_index(tmp_path / "idx", vectors, SPECIES)
    conn = sqlite3.connect(version.path / METADATA_FILE)
    conn.execute("UPDATE species SET code = 'amerob' WHERE scientific = 'Turdus migratorius'")
    conn.commit()
    assert {s.scientific: s.code for s in IndexVersion(version.path).species()}[
        "Turdus migratorius"
    ] == "amerob"
    conn.execute("ALTER TABLE species DROP COLUMN code")  # the schema before species codes
    conn.commit()
    conn.close()
    assert {s.code for s in IndexVersion(version.path).species()} == {""}
