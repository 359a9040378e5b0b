"""The open-set gate in POST /query: novel windows abstain with their reason, min_conf's default is the
gate's, the nearest species are listed only when asked, and where a gate and its reference are found."""

from __future__ import annotations

import logging

import numpy as np

from birdsearch.engine.gate import gate_for, open_set_place
from birdsearch.model.calibration import FILE_NAME, Platt, save_calibration
from birdsearch.model.novelty import OPEN_SET_FILE, OpenSet, Reference, save_open_set, save_reference

FOCAL = "perch_21100_36_48_16k_10s.flac"
SCAPE = "birdnet_soundscape_48k_30s.flac"


async def post(client, path, **form):
    with open(path, "rb") as f:
        return await client.post("/query", files={"audio": (path.name, f.read())}, data=form)


def gated(folder, gate: OpenSet):
    """A calibration file with the gate beside it; returns the calibration file's path."""
    calibration = save_calibration(folder / FILE_NAME, "distilled", Platt((8.0,), -2.0))
    save_open_set(folder / OPEN_SET_FILE, "distilled", gate)
    return calibration


def test_novel_windows_abstain_and_say_why(api, helpers, tmp_path):
    """max_confidence novelty is at least 0: a threshold below it calls every window novel."""
    calibration = gated(tmp_path, OpenSet("max_confidence", -1.0, min_conf=0.0))

    async def main():
        async with api(calibration=str(calibration)) as (_, client):
            plain = await post(client, helpers.audio_file(SCAPE), mode="distilled", species_k="3")
            listed = await post(client, helpers.audio_file(SCAPE), mode="distilled", species_k="3",
                                include_abstained="true")  # fmt: skip
            version = await client.get("/version")
        return plain, listed, version

    plain, listed, version = helpers.run(main())
    body = plain.json()
    assert plain.status_code == 200, plain.text
    assert (
        body["abstained"] is True and body["reason"] == "novel" and "not in this gallery" in body["message"]
    )
    assert body["species"] == [] and body["images"] == [] and body["min_conf"] == 0.0
    assert all(w["abstained"] and w["reason"] == "novel" and w["species"] == [] for w in body["timeline"])
    assert all(w["novelty"] is not None and w["novelty"] >= 0 for w in body["timeline"])
    nearest = listed.json()
    assert nearest["reason"] == "novel" and nearest["species"] and nearest["images"]
    assert all(not s["detected"] for s in nearest["species"])
    assert all(s["detected"] is False for w in nearest["timeline"] for s in w["species"])
    assert version.json()["open_set"]["distilled"]["signal"] == "max_confidence"


def test_min_conf_defaults_to_the_gates_and_a_question_overrides_it(api, helpers, tmp_path):
    calibration = gated(tmp_path, OpenSet("max_confidence", 2.0, min_conf=0.6))  # nothing is novel

    async def main():
        async with api(calibration=str(calibration)) as (_, client):
            default = await post(client, helpers.audio_file(FOCAL), mode="distilled")
            asked = await post(client, helpers.audio_file(FOCAL), mode="distilled", min_conf="0")
        return default.json(), asked.json()

    default, asked = helpers.run(main())
    assert default["min_conf"] == 0.6 and asked["min_conf"] == 0.0
    assert all(s["confidence"] >= 0.6 for s in default["species"])
    assert len(asked["species"]) >= len(default["species"]) and asked["abstained"] is False
    assert all(w["reason"] in (None, "below_min_conf") for w in default["timeline"])


def test_without_a_gate_the_answer_is_as_before_and_the_start_says_so(api, helpers, tmp_path, caplog):
    calibration = save_calibration(tmp_path / FILE_NAME, "distilled", Platt((8.0,), -2.0))

    async def main():
        async with api(calibration=str(calibration)) as (_, client):
            return (await post(client, helpers.audio_file(FOCAL), mode="distilled")).json()

    with caplog.at_level(logging.WARNING):
        body = helpers.run(main())
    assert body["min_conf"] is None and body["abstained"] is False
    assert all(w["novelty"] is None and w["reason"] is None for w in body["timeline"])
    assert "no open-set gate for mode distilled" in caplog.text


def test_a_reference_gate_loads_from_the_mode_folder_and_needs_its_reference(tmp_path, loaded_models, caplog):
    """knn and mahalanobis gates read the model's reference; without it, or with another model's, no gate."""
    embedder = loaded_models.distilled
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    save_calibration(encoder / FILE_NAME, "distilled", Platt((8.0,), -2.0))
    save_open_set(encoder / OPEN_SET_FILE, "distilled", OpenSet("knn", 0.3, {"k": 2}, 0.4))
    assert open_set_place("distilled", "", str(encoder), tmp_path) == encoder / OPEN_SET_FILE
    with caplog.at_level(logging.WARNING):
        assert gate_for("distilled", "", str(encoder), tmp_path, embedder) is None
    assert "no novelty reference" in caplog.text
    rng = np.random.default_rng(0)
    wrong = Reference(
        rng.standard_normal((6, embedder.tower_dim + 1)).astype(np.float32), np.arange(6) % 2, ("a", "b")
    )
    save_reference(wrong, encoder)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert gate_for("distilled", "", str(encoder), tmp_path, embedder) is None
    assert "belongs to another model" in caplog.text
    tower = rng.standard_normal((6, embedder.tower_dim)).astype(np.float32)
    save_reference(Reference(tower, np.arange(6) % 2, ("a", "b")), encoder)
    gate = gate_for("distilled", "", str(encoder), tmp_path, embedder)
    assert gate is not None and gate.min_conf == 0.4
    values = gate.novelty(np.concatenate([tower[:1], -tower[:1]]), None, None, None)
    assert values[0] < values[1]  # a reference window is nearer than its opposite


def test_the_query_table_says_not_in_this_gallery():
    from birdsearch.client import render_table

    facts = {"duration_s": 20.0, "windows": 2, "window_s": 10, "hop_s": 10, "model": {"mode": "distilled"},
             "index": {"name": "v1", "count": 3}, "timings_ms": {"total": 5}}  # fmt: skip
    nearest = {"species": "Apus apus", "common_name": "Common Swift", "score": 0.61, "windows": 1,
               "confidence": 0.0, "detected": False}  # fmt: skip
    novel = {"start_s": 0, "end_s": 10, "species": [nearest], "abstained": True, "reason": "novel"}
    answer = {"query": facts, "species": [nearest], "images": [], "abstained": True, "reason": "novel",
              "message": "the recording is unlike the recordings the model knows: not in this gallery",
              "timeline": [novel, {**novel, "start_s": 10, "end_s": 20}]}  # fmt: skip
    table = render_table(answer)
    assert "not in this gallery: the recording is unlike" in table
    assert "Common Swift (Apus apus)  (nearest, not detected)" in table
    assert table.count("not in this gallery (unlike the recordings the model knows)") == 2
