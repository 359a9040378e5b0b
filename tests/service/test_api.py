"""The HTTP API in-process: answers equal the pipeline computed by hand, and every route documented."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from birdsearch.indexer.store import IndexRoot
from birdsearch.model import audio
from birdsearch.model.encoder import load_encoder

FOCAL = "perch_21100_36_48_16k_10s.flac"
SOUNDSCAPE = "birdnet_soundscape_48k_30s.flac"


async def post(client, path, **form):
    with open(path, "rb") as f:
        return await client.post("/query", files={"audio": (path.name, f.read())}, data=form)


def direct_top_images(index_root, vectors, k, candidates):
    version = IndexRoot(index_root).open_current()
    scores, ids = version.search(np.asarray(vectors, dtype=np.float32), candidates)
    best = {}
    for w in range(len(ids)):
        for s, i in zip(scores[w], ids[w], strict=True):
            if i >= 0 and s > best.get(int(i), -np.inf):
                best[int(i)] = float(s)
    return sorted(best.items(), key=lambda item: (-item[1], item[0]))[:k]


def test_distilled_answer_equals_the_pipeline_by_hand(api, helpers, tiny_models, index_root):
    path = helpers.audio_file(FOCAL)

    async def main():
        async with api() as (_, client):
            return await post(client, path, k="5", mode="distilled", species_rule="best")

    r = helpers.run(main())
    assert r.status_code == 200, r.text
    body = r.json()
    recording = audio.load(path)
    windows = audio.split(recording.samples, recording.sample_rate).samples
    vectors = load_encoder(tiny_models["encoder"], "cpu").embed_windows(windows)
    expected = direct_top_images(index_root, vectors, 5, body["aggregation"]["candidates_per_window"])
    assert [h["id"] for h in body["images"]] == [i for i, _ in expected]
    np.testing.assert_allclose([h["score"] for h in body["images"]], [s for _, s in expected], atol=1e-5)
    q = body["query"]
    assert q["model"]["mode"] == "distilled" and q["index"]["name"] == "v0001"
    assert (q["source_sample_rate"], q["sample_rate"], q["windows"], q["padded"]) == (16000, 48000, 1, False)
    assert set(q["timings_ms"]) == {"decode", "embed", "search", "total"}
    species = body["species"]
    assert len(species) == 5 and species[0]["species"] == body["images"][0]["species"]
    assert species[0]["score"] == pytest.approx(body["images"][0]["score"])  # the best-photo rule, asked for
    assert [s["score"] for s in species] == sorted((s["score"] for s in species), reverse=True)


def test_cascade_answer_equals_the_cascade_by_hand(api, helpers, tiny_models, index_root):
    from birdsearch.model.query import CascadeQuery
    from birdsearch.model.student import Student

    path = helpers.audio_file(FOCAL)

    async def main():
        async with api() as (_, client):
            return await post(client, path, k="4", mode="cascade")

    body = helpers.run(main()).json()
    version = IndexRoot(index_root).open_current()
    names, teacher_species = version.species_embeddings()
    records = {r.scientific: r for r in version.species()}
    student = Student.load(str(tiny_models["student"]), "cpu")
    cascade = CascadeQuery(
        student,
        student.embed_species([records[n].taxon() for n in names], "com"),
        torch.from_numpy(teacher_species),
    )
    recording = audio.load(path)
    vectors = cascade.embed_windows(audio.split(recording.samples, recording.sample_rate).samples)
    expected = direct_top_images(index_root, vectors, 4, body["aggregation"]["candidates_per_window"])
    assert [h["id"] for h in body["images"]] == [i for i, _ in expected]
    assert body["query"]["model"]["mode"] == "cascade"


def test_auto_mode_follows_the_checkpoint_setting(api, helpers):
    path = helpers.audio_file(FOCAL)

    async def mode_of(**settings):
        async with api(**settings) as (_, client):
            return (await post(client, path)).json()["query"]["model"]["mode"]

    assert helpers.run(mode_of()) == "distilled"
    assert helpers.run(mode_of(checkpoint="")) == "cascade"


def test_a_mode_without_its_model_is_refused_with_the_fix(settings_for, loaded_models, helpers):
    from birdsearch.engine.runtime import Models

    async def main():
        models = Models(None, loaded_models.student)
        async with helpers.running_app(settings_for(checkpoint=""), models) as (_, client):
            r = await post(client, helpers.audio_file(FOCAL), mode="distilled")
            ready = (await client.get("/readyz")).json()
            return r, ready

    r, ready = helpers.run(main())
    assert r.status_code == 422 and r.json()["code"] == "mode_unavailable"
    assert "BIRDSEARCH_CHECKPOINT" in r.json()["detail"]
    assert ready["modes"] == ["cascade"]


def test_long_recording_gets_a_timeline_and_says_how_it_aggregated(api, helpers):
    path = helpers.audio_file(SOUNDSCAPE)

    async def main():
        async with api() as (_, client):
            return await post(client, path, hop_s="5", species_k="3", k="6")

    body = helpers.run(main()).json()
    timeline = body["timeline"]
    assert [w["start_s"] for w in timeline] == [0.0, 5.0, 10.0, 15.0, 20.0]
    assert [w["end_s"] for w in timeline] == [10.0, 15.0, 20.0, 25.0, 30.0]
    assert all(len(w["species"]) == 3 for w in timeline)
    assert body["query"]["windows"] == 5 and body["query"]["hop_s"] == 5.0
    agg = body["aggregation"]
    assert agg["recording_species_score"] == "max over windows" and agg["candidates_per_window"] >= 6
    # the recording's score of a species is its best window score, and the window counts add up
    for s in body["species"]:
        per_window = [x["score"] for w in timeline for x in w["species"] if x["species"] == s["species"]]
        assert s["score"] == pytest.approx(max(per_window))
        assert timeline[s["best_window"]]["species"][0]["score"] >= s["score"] - 1e-6 or s["windows"] == 0
    assert sum(s["windows"] for s in body["species"]) <= 5
    assert {h["window"] for h in body["images"]} <= set(range(5))


def test_shorter_windows_are_padded_to_the_model_window(api, helpers):
    async def main():
        async with api() as (_, client):
            return await post(client, helpers.audio_file(FOCAL), window_s="5", hop_s="2.5")

    body = helpers.run(main()).json()
    assert [w["start_s"] for w in body["timeline"]] == [0.0, 2.5, 5.0]
    assert body["query"]["window_s"] == 5.0


def test_taxon_filters(api, helpers):
    path = helpers.audio_file(FOCAL)

    async def main():
        async with api() as (_, client):
            return {
                "species": await post(client, path, species="turdus migratorius", k="20"),
                "two": await post(client, path, species="Turdus migratorius, Junco hyemalis", k="20"),
                "genus": await post(client, path, genus="Turdus", k="20"),
                "family": await post(client, path, family="Paridae", k="20"),
                "order": await post(client, path, order="Passeriformes", k="20"),
                "unknown": await post(client, path, species="Dodo ineptus"),
                "nothing": await post(client, path, genus="Turdus", family="Paridae"),
            }

    r = helpers.run(main())
    species_of = {
        name: {h["species"] for h in r[name].json()["images"]}
        for name in ("species", "two", "genus", "family")
    }
    assert species_of["species"] == {"Turdus migratorius"}
    assert r["species"].json()["query"]["filtered_images"] == 3
    assert species_of["two"] == {"Turdus migratorius", "Junco hyemalis"}
    assert species_of["genus"] == {"Turdus migratorius", "Turdus merula"}
    assert species_of["family"] == {"Poecile atricapillus"}
    assert len(r["order"].json()["images"]) == 18
    assert (
        r["unknown"].status_code == 422
        and "'Dodo ineptus' is not in index v0001" in r["unknown"].json()["detail"]
    )
    assert r["nothing"].status_code == 422 and "no image" in r["nothing"].json()["detail"]


def test_photos_thumbnails_and_species(api, helpers, index_root):
    async def main():
        async with api(thumbnail_size=40) as (_, client):
            body = (await post(client, helpers.audio_file(FOCAL), k="3")).json()
            hit = body["images"][0]
            return (
                hit,
                await client.get(hit["url"]),
                await client.get(hit["thumbnail_url"]),
                await client.get("/species"),
            )

    hit, photo, thumb, species = helpers.run(main())
    version = IndexRoot(index_root).open_current()
    assert photo.status_code == 200 and photo.headers["content-type"] == "image/jpeg"
    assert photo.content == version.image_file(hit["id"]).read_bytes()
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256
    listed = species.json()
    assert listed["index"] == "v0001"
    assert [s["species"] for s in listed["species"]] == sorted(s.scientific for s in version.species())
    assert all(s["images"] == 3 for s in listed["species"])


def test_operations_routes(api, helpers):
    async def main():
        async with api() as (_, client):
            await post(client, helpers.audio_file(FOCAL))
            return {p: await client.get(p) for p in ("/healthz", "/readyz", "/version", "/metrics", "/")}

    r = helpers.run(main())
    assert r["/healthz"].json() == {"status": "ok"}
    assert r["/readyz"].json() == {
        "ready": True,
        "index": "v0001",
        "modes": ["distilled", "cascade"],
        "detail": None,
    }
    version = r["/version"].json()
    assert version["index"]["name"] == "v0001" and version["default_mode"] == "distilled"
    assert set(version["models"]) == {"distilled", "cascade"} and version["models"]["distilled"]["dim"] == 32
    metrics = r["/metrics"].text
    for stage in ("decode", "features", "encode", "search"):
        assert f'birdsearch_stage_seconds_count{{stage="{stage}"}}' in metrics
    assert 'birdsearch_requests_total{method="POST",route="/query",status="200"}' in metrics
    assert "birdsearch_batch_windows_bucket" in metrics
    assert r["/"].status_code == 200 and "<html" in r["/"].text.lower()


def test_the_evaluation_report_is_served_once_it_is_written(api, helpers, tmp_path):
    """The demo starts serving before its evaluation is done: the page asks until the file is there."""
    report = tmp_path / "report.md"

    async def main():
        async with api() as (_, client):
            unset = await client.get("/evaluation")
        async with api(evaluation_report=report) as (_, client):
            pending = await client.get("/evaluation")
            report.write_text(f"Gallery: index {tmp_path}/index.\n\n| method | mAP |\n| distilled | 61.3 |\n")
            return unset, pending, await client.get("/evaluation")

    unset, pending, ready = helpers.run(main())
    assert unset.status_code == 404 and unset.json()["code"] == "not_found"
    assert "BIRDSEARCH_EVALUATION_REPORT" in unset.json()["detail"]
    assert pending.status_code == 200 and pending.json() == {"ready": False, "markdown": None}
    expected = "Gallery: index …/index.\n\n| method | mAP |\n| distilled | 61.3 |\n"  # no server paths
    assert ready.json() == {"ready": True, "markdown": expected}


def test_openapi_documents_every_route_with_examples(api, helpers):
    async def main():
        async with api() as (_, client):
            return (await client.get("/openapi.json")).json()

    spec = helpers.run(main())
    paths = spec["paths"]
    for path in ("/query", "/images/{image_id}", "/images/{image_id}/thumbnail", "/species", "/healthz", "/readyz",
                 "/metrics", "/version", "/evaluation", "/admin/reload"):  # fmt: skip
        assert path in paths, path
    query = paths["/query"]["post"]
    body_ref = query["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].split("/")[-1]
    fields = spec["components"]["schemas"][body_ref]["properties"]
    assert {
        "audio",
        "k",
        "species_k",
        "window_s",
        "hop_s",
        "species",
        "genus",
        "family",
        "order",
        "mode",
    } <= set(fields)
    assert {"200", "413", "415", "422", "503"} <= set(query["responses"])
    assert query["responses"]["415"]["content"]["application/json"]["example"]["code"] == "unsupported_audio"
    schemas = spec["components"]["schemas"]
    for model in ("QueryResponse", "ImageHit", "SpeciesHit", "TimelineWindow", "QueryFacts", "Aggregation"):
        assert model in schemas
    assert schemas["ImageHit"]["properties"]["score"]["examples"] == [0.61]
    assert "401" in paths["/admin/reload"]["post"]["responses"]


def test_admin_reload_needs_the_key(api, helpers):
    async def main(**settings):
        async with api(**settings) as (_, client):
            return [
                await client.post("/admin/reload"),
                await client.post("/admin/reload", headers={"Authorization": "Bearer wrong"}),
                await client.post("/admin/reload", headers={"Authorization": "Bearer k3y"}),
            ]

    off = helpers.run(main())
    assert [r.status_code for r in off] == [403, 403, 403] and off[0].json()["code"] == "admin_disabled"
    on = helpers.run(main(admin_key="k3y"))
    assert [r.status_code for r in on] == [401, 401, 200]
    assert on[0].json()["code"] == "unauthorized"
    assert on[2].json() == {"changed": False, "previous": "v0001", "current": "v0001", "detail": None}


def test_not_ready_until_an_index_is_published(settings_for, loaded_models, helpers, tmp_path, index_root):
    root = tmp_path / "empty-root"

    async def main():
        async with helpers.running_app(settings_for(index_root=root, admin_key="k"), loaded_models) as (
            _,
            client,
        ):
            before = [
                await client.get("/readyz"),
                await post(client, helpers.audio_file(FOCAL)),
                await client.get("/species"),
            ]
            helpers.copy_index(index_root, root)
            reload = await client.post("/admin/reload", headers={"Authorization": "Bearer k"})
            after = [await client.get("/readyz"), await post(client, helpers.audio_file(FOCAL))]
            return before, reload, after

    before, reload, after = helpers.run(main())
    assert before[0].status_code == 503 and "birdsearch index" in before[0].json()["detail"]
    assert before[1].status_code == 503 and before[1].json()["code"] == "not_ready"
    assert before[2].status_code == 503
    assert reload.json()["changed"] is True and reload.json()["current"] == "v0001"
    assert [r.status_code for r in after] == [200, 200]


def test_an_index_for_another_teacher_is_refused_and_the_old_one_kept(
    api, helpers, index_root, tmp_path, settings_for, loaded_models
):
    from birdsearch.model.standins import TINY_TEACHER_CFG, build_teacher, save_teacher

    other_cfg = {**TINY_TEACHER_CFG, "embed_dim": 16}
    other = save_teacher(build_teacher(other_cfg, seed=3), tmp_path / "other-teacher", other_cfg)
    root = helpers.copy_index(index_root, tmp_path / "index")
    gallery = helpers.write_gallery(tmp_path / "gallery", species=("Pica pica",), seed=5)

    async def main():
        settings = settings_for(index_root=root, admin_key="k")
        async with helpers.running_app(settings, loaded_models) as (_, client):
            helpers.build_index(gallery, root, f"local-dir:{other}")  # v0002: 16-d vectors
            reload = await client.post("/admin/reload", headers={"Authorization": "Bearer k"})
            ready = await client.get("/readyz")
            r = await post(client, helpers.audio_file(FOCAL))
            return reload.json(), ready, r

    reload, ready, r = helpers.run(main())
    assert reload["changed"] is False and reload["current"] == "v0001"
    assert "v0002 refused" in reload["detail"] and "16-d vectors" in reload["detail"]
    assert ready.status_code == 200 and "v0002 refused" in ready.json()["detail"]
    assert r.status_code == 200 and r.json()["query"]["index"]["name"] == "v0001"


def test_a_failing_model_answers_500_in_the_error_shape(helpers, settings_for, loaded_models):
    from birdsearch.engine.runtime import Models

    class Broken:
        """The distilled embedder with a forward pass that raises (a bug, or a CUDA error)."""

        mode = "distilled"

        def __init__(self, inner):
            self.front_end, self.facts, self.staging = inner.front_end, inner.facts, None

        def __call__(self, windows):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    async def main():
        models = Models(Broken(loaded_models.distilled), loaded_models.student)
        async with helpers.running_app(settings_for(), models) as (_, client):
            failed = await post(client, helpers.audio_file(FOCAL), mode="distilled")
            cascade = await post(client, helpers.audio_file(FOCAL), mode="cascade")
            return failed, cascade

    failed, cascade = helpers.run(main())
    assert failed.status_code == 500
    assert failed.json() == {"detail": "internal error; the server log has the details", "code": "internal"}
    assert cascade.status_code == 200
