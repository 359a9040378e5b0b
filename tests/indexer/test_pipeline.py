"""End to end on real photos with a tiny random teacher: odd images, incremental counts, publish."""

import shutil

import numpy as np
import pytest

from birdsearch.indexer.pipeline import IndexConfig, run_index
from birdsearch.indexer.store import IndexRoot


def config(gallery, out, teacher, **kw):
    return IndexConfig(
        gallery=gallery, out=out, teacher=teacher, device="cpu", workers=2, progress=False, **kw
    )


def test_real_gallery_with_every_odd_image(real_gallery, tmp_path, tiny_teacher_spec):
    summary = run_index(config(real_gallery, tmp_path / "idx", tiny_teacher_spec))
    failed = dict(summary.failed)
    assert failed == {
        "Loxodonta_africana/ctai_NONBIRD_elephants_truncated.jpg": "truncated file",
        "Junco_hyemalis/notes.txt": "not an image (unrecognised format)",
        "README.md": "not inside a species folder (expected <species>/<image>)",
    }
    assert summary.published and summary.count == 17 and summary.added == 17
    version = IndexRoot(tmp_path / "idx").open_current()
    by_key = {r.key: r for r in version.images(np.arange(version.count))}
    # EXIF orientation 6: stored 512x768, upright 768x512.
    assert (
        by_key["Ara_chloropterus/kodim23_exif_orientation6.jpg"].width,
        by_key["Ara_chloropterus/kodim23_exif_orientation6.jpg"].height,
    ) == (768, 512)
    macaw = by_key["Ara_ararauna/kodim23_macaws.png"]
    assert (macaw.species, macaw.common, macaw.family, macaw.order) == (
        "Ara ararauna", "Blue-and-yellow Macaw", "Psittacidae", "Psittaciformes",
    )  # fmt: skip
    assert by_key["Junco_hyemalis/gradient16.png"].species == "Junco hyemalis"
    # The upright photo and its EXIF-rotated copy embed alike; CMYK and grayscale copies stay close.
    vectors = version.vectors()
    original = vectors[macaw.id]
    rotated = vectors[by_key["Ara_chloropterus/kodim23_exif_orientation6.jpg"].id]
    assert float(original @ rotated) > 0.99
    thumb = version.thumbnail_file(macaw.id)
    assert (
        thumb.suffix == ".jpg"
        and thumb.is_file()
        and version.image_file(macaw.id).samefile(real_gallery / "Ara_ararauna" / "kodim23_macaws.png")
    )
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    names, text = version.species_embeddings()
    assert len(names) == 13 and text.shape == (13, 32)  # the elephant failed
    manifest = version.manifest
    assert manifest["teacher"]["id"] == tiny_teacher_spec and manifest["index_type"] == "Flat"
    assert manifest["count"] == 17 and manifest["recall_at_10"] == 1.0 and len(manifest["source_hash"]) == 64
    assert set(version.failures()) == set(summary.failed)
    # A search for an image's own vector finds it first.
    _, ids = version.search(vectors[[macaw.id]], 1)
    assert vectors[ids[0, 0]] @ original > 0.999


def test_incremental_reindex_counts_and_reuse(tmp_path, tiny_teacher_spec, synthetic_photos):
    gallery = tmp_path / "gallery"
    synthetic_photos(gallery / "Turdus_migratorius", 6, seed=1)
    synthetic_photos(gallery / "Junco_hyemalis", 4, seed=2)
    out = tmp_path / "idx"
    first = run_index(config(gallery, out, tiny_teacher_spec))
    assert (first.added, first.embedded, first.version) == (10, 10, "v0001")
    v1 = IndexRoot(out).open_current()
    robin = v1.vectors()[v1.ids_for(species="Turdus migratorius")].copy()

    (gallery / "Junco_hyemalis" / "img0000.jpg").unlink()  # removed
    shutil.copy(
        gallery / "Junco_hyemalis" / "img0001.jpg", gallery / "Junco_hyemalis" / "copy.jpg"
    )  # same bytes
    synthetic_photos(gallery / "Passer_domesticus", 2, seed=3)  # new species
    synthetic_photos(gallery / "Junco_hyemalis", 1, seed=9)[0].rename(
        gallery / "Junco_hyemalis" / "img0002.jpg"
    )
    second = run_index(config(gallery, out, tiny_teacher_spec))
    assert (second.added, second.removed, second.changed, second.unchanged) == (3, 1, 1, 8)
    assert second.embedded == 3  # 2 new photos + 1 changed; the copy reuses its twin's vector
    v2 = IndexRoot(out).open_current()
    assert v2.name == "v0002" and v2.count == 12
    np.testing.assert_array_equal(v2.vectors()[v2.ids_for(species="Turdus migratorius")], robin)
    # The incremental result equals a fresh build of the same gallery.
    fresh = run_index(config(gallery, tmp_path / "fresh", tiny_teacher_spec))
    v_fresh = IndexRoot(tmp_path / "fresh").open_current()
    assert fresh.embedded == 11
    assert v_fresh.manifest["source_hash"] == v2.manifest["source_hash"]
    np.testing.assert_allclose(v_fresh.vectors(), v2.vectors(), atol=1e-5)

    third = run_index(config(gallery, out, tiny_teacher_spec))  # nothing changed: nothing published
    assert not third.published and third.version == "v0002" and third.unchanged == 12
    forced = run_index(config(gallery, out, tiny_teacher_spec, force=True, keep=2))
    assert forced.version == "v0003" and forced.embedded == 0
    assert IndexRoot(out).versions() == ["v0002", "v0003"]


def test_index_type_choice_and_measured_recall(tmp_path, tiny_teacher_spec, synthetic_photos):
    gallery = tmp_path / "gallery"
    for i, species in enumerate(["Turdus_migratorius", "Junco_hyemalis", "Passer_domesticus"]):
        synthetic_photos(gallery / species, 40, seed=10 + i)
    for kind, factory in (("hnsw", "HNSW32"), ("ivf", "IVF3,Flat"), ("ivfpq", "IVF3,PQ2x4")):
        summary = run_index(
            config(gallery, tmp_path / kind, tiny_teacher_spec, force=True, index=_options(kind))
        )
        version = IndexRoot(tmp_path / kind).open_current()
        assert version.index_type == factory and summary.index_type.startswith(factory)
        assert 0.95 <= version.manifest["recall_at_10"] <= 1.0 and version.manifest["search_params"]
        if (
            kind == "ivfpq"
        ):  # its shortlist is re-ranked from float16 vectors on disk, by the service's searcher
            assert (
                version.manifest["rerank"] == {"encoding": "float16"}
                and "rerank.npy" in version.manifest["files"]
            )
            assert version.searcher.rerank is not None and version.searcher.k_factor >= 1
        # The service's search delivers the recall the manifest records for the photos themselves.
        exact = np.argsort(-(version.vectors() @ version.vectors().T).T, axis=1)[:, :10]
        _, found = version.search(version.vectors(), 10)
        measured = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=True)])
        assert measured == pytest.approx(
            version.manifest["recall_by_query"]["self"]["recall_at_10"], abs=0.02
        )
        assert measured >= (0.85 if kind == "ivfpq" else 0.9)  # near-duplicates: see _options


def _options(kind):
    from birdsearch.indexer.faiss_index import IndexOptions

    # The tiny teacher's photos are near-duplicates (cosines within 1e-3), closer than 8-bit steps.
    return IndexOptions(index_type=kind, recall_queries=120, storage="float16" if kind == "ivfpq" else "auto")


def test_manifest_gallery_with_urls_from_a_local_server(
    tmp_path, tiny_teacher_spec, real_fixtures, synthetic_photos
):
    import csv
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    synthetic_photos(served, 3, seed=5)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        local = tmp_path / "local"
        local.mkdir()
        shutil.copy(real_fixtures / "images" / "phoebe_Sayornis_nigricans.jpg", local / "phoebe.jpg")
        manifest = tmp_path / "gallery.csv"
        rows = [
            {"path": f"{base}/img0000.jpg", "species": "Ficedula hypoleuca", "family": "Muscicapidae", "order": "Passeriformes", "license": "CC0", "attribution": "A. Photographer"},
            {"path": f"{base}/img0001.jpg", "species": "Turdus migratorius", "family": "", "order": "", "license": "CC BY 4.0", "attribution": "B"},
            {"path": f"{base}/missing.jpg", "species": "Turdus migratorius", "family": "", "order": "", "license": "", "attribution": ""},
            {"path": "local/phoebe.jpg", "species": "Black Phoebe", "family": "", "order": "", "license": "CC BY-SA 2.0", "attribution": "Felix Uribe"},
            {"path": "local/phoebe.jpg", "species": "Black Phoebe", "family": "", "order": "", "license": "", "attribution": ""},
        ]  # fmt: skip
        with manifest.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        summary = run_index(config(manifest, tmp_path / "idx", tiny_teacher_spec))
        version = IndexRoot(tmp_path / "idx").open_current()
        records = {r.key: r for r in version.images(np.arange(version.count))}
        assert set(records) == {f"{base}/img0000.jpg", f"{base}/img0001.jpg", "local/phoebe.jpg"}
        flycatcher = records[f"{base}/img0000.jpg"]
        assert (flycatcher.family, flycatcher.license, flycatcher.attribution) == (
            "Muscicapidae",
            "CC0",
            "A. Photographer",
        )
        assert version.image_file(flycatcher.id).read_bytes() == (served / "img0000.jpg").read_bytes()
        assert records["local/phoebe.jpg"].species == "Sayornis nigricans"  # common name resolved
        assert records[f"{base}/img0001.jpg"].family == "Turdidae"  # from the bundled table
        reasons = dict(summary.failed)
        assert reasons[f"{base}/missing.jpg"].startswith("download failed: HTTP 404")
        assert "listed twice" in reasons["local/phoebe.jpg"]
        # Parquet: the same manifest, and the reindex reuses stored downloads without the server.
        import pandas as pd

        pd.read_csv(manifest, keep_default_na=False).to_parquet(tmp_path / "gallery.parquet")
    finally:
        server.shutdown()
        server.server_close()
    again = run_index(config(tmp_path / "gallery.parquet", tmp_path / "idx", tiny_teacher_spec))
    assert again.embedded == 0 and again.unchanged == 3 and not again.published
