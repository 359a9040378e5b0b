"""The index at scale: tuning on the queries the service asks, compact storage, memory-mapped reads, the bench."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from birdsearch.errors import ConfigError
from birdsearch.indexer.faiss_index import IndexOptions, build_index, choose_index_type, factory_string

ROOT = Path(__file__).resolve().parents[2]


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n=3000, dim=32, species=60, gap=2.5, seed=0):
    """Photos around species centroids, and text queries offset from the centroids by a shared gap."""
    rng = np.random.default_rng(seed)
    centre = unit(rng.standard_normal((species, dim)))
    photos = unit(centre[rng.integers(0, species, n)] + 0.5 * rng.standard_normal((n, dim)) / np.sqrt(dim))
    shift = gap * unit(rng.standard_normal((1, dim)))
    text = unit(centre + shift + 0.3 * rng.standard_normal((species, dim)) / np.sqrt(dim))
    return photos, text


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
    assert factory_string("flat", 10, 768, IndexOptions(storage="sq8")) == "SQ8"
    assert factory_string("hnsw", 10, 768, IndexOptions(storage="float16")) == "HNSW32,SQfp16"
    assert factory_string("ivf", 10_000, 768, IndexOptions(storage="sq8")) == "IVF256,SQ8"
    # Smaller codes let a larger gallery stay exact within the same memory budget.
    budget = 100_000 * 768 * 2
    assert choose_index_type(100_000, 768, IndexOptions(memory_budget_bytes=budget)) == "ivfpq"
    assert (
        choose_index_type(100_000, 768, IndexOptions(memory_budget_bytes=budget, storage="float16")) == "flat"
    )
    with pytest.raises(ConfigError, match="unknown vector storage 'int4'"):
        IndexOptions(storage="int4")
    photos, text = clustered()
    built = build_index(photos, IndexOptions(index_type="flat", storage="sq8"), {"species_text": text})
    assert built.factory == "SQ8" and built.index.code_size == 32
    assert 0.8 <= built.recall_by_query["species_text"]["recall_at_10"] <= 1.0


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


def test_the_scale_bench_smoke_run(tmp_path):
    out = tmp_path / "scale"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "index_scale.py"), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    factories = {(r["n"], r["factory"]) for r in result["rows"]}
    assert {(800, "Flat"), (800, "SQ8"), (1600, "HNSW32"), (1600, "IVF41,Flat")} <= factories
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
