"""The index at scale: tuning on the queries the service asks, compact storage, memory-mapped reads, the bench."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from birdsearch.errors import ConfigError, IndexFormatError
from birdsearch.indexer.faiss_index import (
    IndexOptions,
    build_index,
    choose_index_type,
    exact_neighbours,
    index_plans,
    plan,
    recall_at_k,
)
from birdsearch.indexer.search import RerankStore, encode_rows, sq8_range
from birdsearch.indexer.store import VectorRows, write_npy

ROOT = Path(__file__).resolve().parents[2]


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def cross_modal(n=3000, dim=32, species=60, gap=2.5, seed=0, held_out=0):
    """Photos around species centroids; one text query per species, offset from its centroid by a
    shared gap (what the indexer tunes on); ``held_out`` more queries of that kind (what a user asks)."""
    rng = np.random.default_rng(seed)
    centre = unit(rng.standard_normal((species, dim)))
    photos = unit(centre[rng.integers(0, species, n)] + 0.5 * rng.standard_normal((n, dim)) / np.sqrt(dim))
    shift = gap * unit(rng.standard_normal((1, dim)))

    def queries(rows):
        return unit(centre[rows] + shift + 0.3 * rng.standard_normal((len(rows), dim)) / np.sqrt(dim))

    return photos, queries(np.arange(species)), queries(rng.integers(0, species, held_out))


def clustered(n=3000, dim=32, species=60, gap=2.5, seed=0):
    """Photos and one text query per species (see ``cross_modal``)."""
    return cross_modal(n, dim, species, gap, seed)[:2]


def test_an_approximate_index_is_tuned_on_the_cross_modal_queries():
    photos, text = clustered()
    built = build_index(photos, IndexOptions(index_type="hnsw", target_recall=0.95), {"species_text": text})
    assert set(built.recall_by_query) == {"species_text", "self"}
    assert built.recall_by_query["species_text"]["queries"] == len(text)
    # The recall the manifest records is that of the tuned kind, not of the (easier) self-queries.
    assert built.recall_at_10 == built.recall_by_query["species_text"]["recall_at_10"] >= 0.95
    assert built.recall_queries == len(text) + built.recall_by_query["self"]["queries"]
    assert built.search_params["efSearch"] >= 16


def test_an_approximate_index_without_cross_modal_queries_is_refused():
    photos, _ = clustered(n=500)
    with pytest.raises(ConfigError, match="species' text embeddings"):
        build_index(photos, IndexOptions(index_type="ivf"))
    with pytest.raises(ConfigError, match="dimension 32"):
        build_index(photos, IndexOptions(index_type="ivf"), {"audio": np.ones((3, 8), np.float32)})
    assert (
        build_index(photos, IndexOptions(index_type="flat")).recall_by_query == {}
    )  # exact: nothing to tune


def test_storage_options_pick_the_faiss_encoding_and_measure_its_recall():
    assert plan("flat", "sq8", 10, 768).factory == "SQ8"
    assert plan("hnsw", "float16", 10, 768).factory == "HNSW32,SQfp16"
    assert plan("ivf", "sq8", 10_000, 768).factory == "IVF256,SQ8"
    # Smaller codes let a larger gallery stay exact within the same memory budget.
    budget = plan("flat", "float16", 100_000, 768)
    budget = IndexOptions(memory_budget_bytes=budget.peak_bytes, storage="float32")
    assert choose_index_type(100_000, 768, budget) == "ivfpq"
    assert (
        choose_index_type(100_000, 768, IndexOptions(memory_budget_bytes=budget.memory_budget_bytes))
        == "flat"
    )
    with pytest.raises(ConfigError, match="unknown vector storage 'int4'"):
        IndexOptions(storage="int4")
    photos, text = clustered()
    built = build_index(photos, IndexOptions(index_type="flat", storage="sq8"), {"species_text": text})
    assert built.factory == "SQ8" and built.index.code_size == 32
    assert 0.8 <= built.recall_by_query["species_text"]["recall_at_10"] <= 1.0


def test_auto_keeps_to_a_tiny_budget_and_reaches_the_target(tmp_path, write_simple_index):
    n, dim = 30_000, 96  # 12 components a PQ byte, as for 768-d
    photos, text, asked = cross_modal(n, dim, species=n // 40, gap=1.5, held_out=200, seed=3)
    compact = plan("ivfpq", "sq8", n, dim)
    ivf = [plan("ivf", s, n, dim) for s in ("float32", "float16", "sq8")]
    # A gallery past exact search, and a budget that holds the compact index and its build but not
    # IVF's codes, 8-bit ones included.
    smallest_ivf = min(p.peak_bytes for p in ivf)
    budget = (compact.peak_bytes + smallest_ivf) // 2
    options = IndexOptions(memory_budget_bytes=budget, exact_max=10_000, recall_queries=200)
    plans = index_plans(n, dim, options)
    assert [(p.kind, p.storage) for p in plans] == [
        ("ivfpq", "sq8"),
        ("ivfpq", "float16"),
        ("ivfpq", "float32"),
    ]
    labels = [f"Synthetica s{i % 750:04d}" for i in range(n)]
    version = write_simple_index(tmp_path / "idx", photos, labels, species_embeddings=text, options=options)

    chosen = version.manifest["index_plan"]
    assert (chosen["kind"], chosen["storage"], chosen["memory_budget_bytes"]) == ("ivfpq", "sq8", budget)
    assert chosen["peak_bytes"] <= budget and chosen["tried"] == []
    assert (version.path / "index.faiss").stat().st_size <= chosen["index_bytes"]  # what a reader loads
    assert version.manifest["recall_at_10"] >= 0.95 and version.manifest["search_params"]["k_factor"] >= 1
    # The service's search re-ranks from the 8-bit store and reaches the target on queries it was not tuned on.
    assert version.searcher.rerank.encoding == "sq8"
    assert recall_at_k(version.search(asked, 10)[1], exact_neighbours(asked, photos)) >= 0.93


def test_vector_rows_stream_a_file_and_refuse_a_short_one(tmp_path):
    rows = np.random.default_rng(0).standard_normal((1000, 12)).astype(np.float32)
    write_npy(tmp_path / "v.npy", rows.shape, np.float32, [rows[:300], rows[300:]])
    stored = VectorRows(tmp_path / "v.npy")
    assert stored.shape == (1000, 12) and np.array_equal(np.load(tmp_path / "v.npy"), rows)
    assert np.array_equal(np.concatenate([b for _, b in stored.blocks(256)]), rows)
    ids = np.array([999, 3, 4, 5, 3, 0, 500])  # unsorted, repeated, runs
    assert np.array_equal(stored.take(ids), rows[ids])
    with pytest.raises(IndexFormatError, match="400 rows written for a shape of"):
        write_npy(tmp_path / "short.npy", rows.shape, np.float32, [rows[:400]])
    with (tmp_path / "v.npy").open("r+b") as f:
        f.truncate(f.seek(0, 2) - 100)
    with pytest.raises(IndexFormatError, match="truncated"):
        VectorRows(tmp_path / "v.npy")


def test_a_rerank_store_rescores_the_shortlist_from_its_codes(tmp_path):
    rng = np.random.default_rng(1)
    rows = unit(rng.standard_normal((600, 48)))
    queries = rows[:4] + 0.1 * unit(rng.standard_normal((4, 48)))
    candidates = np.stack([rng.choice(600, 40, replace=False) for _ in range(4)])
    candidates[:, -5:] = -1  # FAISS's pad for "no more candidates"
    low, step = sq8_range(rows)
    for encoding, error in (("float16", 1e-3), ("sq8", float(step.max()) / 2 + 1e-6)):
        codes = encode_rows(rows, encoding, low, step)
        write_npy(tmp_path / f"{encoding}.npy", codes.shape, codes.dtype, [codes])
        store = RerankStore(VectorRows(tmp_path / f"{encoding}.npy"), low, step)
        assert store.encoding == encoding
        assert np.abs(store.vectors(np.arange(600)) - rows).max() <= error
        scores, ids = store.rerank(queries, candidates, 10)
        for q, cand, found in zip(queries, candidates, ids, strict=True):
            real = cand[cand >= 0]
            best = real[np.argsort(-(rows[real] @ q))[:10]]
            assert len(set(found) & set(best)) >= 9 and -1 not in found
        assert np.all(np.diff(scores, axis=1) <= 0)
    with pytest.raises(ConfigError, match="needs the low end and step"):
        RerankStore(VectorRows(tmp_path / "sq8.npy"))


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see memory maps")
def test_the_faiss_index_and_vectors_are_memory_mapped(tmp_path, write_simple_index):
    photos, _ = clustered(n=400)
    version = write_simple_index(tmp_path / "idx", photos, ["Junco hyemalis"] * len(photos))
    maps = Path("/proc/self/maps").read_text()
    assert str(version.path / "index.faiss") in maps and str(version.path / "vectors.npy") in maps
    _, ids = version.search(photos[:5], 1)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_the_served_index_reports_recall_per_query_kind(tmp_path, write_simple_index):
    from birdsearch.engine.index_state import prepare

    photos, text = clustered(species=4)
    labels = [f"Junco s{i % 4}" for i in range(len(photos))]
    version = write_simple_index(tmp_path / "idx", photos, labels, species_embeddings=text, index_type="hnsw")
    described = prepare(version, None, None).describe()
    assert set(described["recall"]) == {"species_text", "self"}
    assert (
        described["recall"]["species_text"]
        == version.manifest["recall_by_query"]["species_text"]["recall_at_10"]
    )
    exact = write_simple_index(tmp_path / "exact", photos, labels)
    assert prepare(exact, None, None).describe()["recall"] == {}


@pytest.mark.slow  # a benchmark's smoke run (~12 s on a 2-core EPYC); auto's rule and budget: the tests above
def test_the_scale_bench_smoke_run(tmp_path):
    out = tmp_path / "scale"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "index_scale.py"), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    factories = {(r["n"], r["factory"]) for r in result["rows"]}
    assert {
        (800, "Flat"),
        (800, "SQ8"),
        (1600, "HNSW32"),
        (1600, "IVF41,Flat"),
        (1600, "IVF41,PQ2"),
    } <= factories
    compact = next(r for r in result["rows"] if r["n"] == 1600 and r["type"] == "ivfpq")
    assert (
        compact["store_bytes"] > 1600 * 32 and compact["search_params"]["k_factor"] >= 1
    )  # 8-bit codes, re-ranked
    for row in result["rows"]:
        assert row["peak_rss_bytes"] > row["disk_bytes"] > 0 and row["build_s"] >= 0
        assert all(0.0 <= v <= 1.0 for v in row["recall_at_10"].values())
        if row["factory"] == "Flat":
            assert row["recall_at_10"] == {"self": 1.0, "cross_modal": 1.0, "species_text": 1.0}
    assert {"flat/float32", "hnsw/float32"} <= set(result["slopes"])
    reload = {r["mode"]: r for r in result["reload"]}
    assert reload["reload"]["swapped"] and not reload["serve"]["swapped"]
    assert "| hot reload" in out.with_suffix(".md").read_text()


def test_the_reindex_bench_smoke_run(tmp_path):
    result_file = tmp_path / "reindex.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "reindex_scale.py"), "--files", "300", "--teacher", "tiny",
         "--work", str(tmp_path), "--json", str(result_file)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(result_file.read_text())
    assert (result["unchanged"], result["embedded"], result["published"]) == (300, 0, False)
    assert result["reindex_s"] > 0 and result["teacher_load_s"] > 0
    assert list(tmp_path.iterdir()) == [result_file]  # its gallery, index, teacher and cache are gone


def test_the_indexer_tunes_on_distilled_audio_when_given(tmp_path, tiny_teacher_spec, synthetic_photos):
    from birdsearch.indexer.pipeline import IndexConfig, run_index
    from birdsearch.indexer.store import IndexRoot

    gallery = tmp_path / "gallery"
    for i, species in enumerate(["Turdus_migratorius", "Junco_hyemalis"]):
        synthetic_photos(gallery / species, 30, seed=20 + i)
    audio = tmp_path / "audio.npy"
    np.save(audio, np.random.default_rng(0).standard_normal((12, 32)).astype(np.float32))

    def index(out, tune_audio, storage="float32"):
        options = IndexOptions(index_type="ivf", recall_queries=50, storage=storage)
        return IndexConfig(gallery=gallery, out=out, teacher=tiny_teacher_spec, device="cpu", workers=0,
                           progress=False, index=options, tune_audio=tune_audio)  # fmt: skip

    summary = run_index(index(tmp_path / "idx", audio, storage="sq8"))
    manifest = IndexRoot(tmp_path / "idx").open_current().manifest
    assert summary.index_type == manifest["index_type"] == "IVF1,SQ8"
    assert set(manifest["recall_by_query"]) == {"species_text", "audio", "self"}
    assert manifest["recall_by_query"]["audio"]["queries"] == 12
    assert manifest["recall_at_10"] == min(
        manifest["recall_by_query"][k]["recall_at_10"] for k in ("species_text", "audio")
    )
    np.save(audio, np.ones((3, 16), np.float32))
    with pytest.raises(ConfigError, match=r"shape \(3, 16\); expected \(Q, 32\)"):
        run_index(index(tmp_path / "bad", audio))
