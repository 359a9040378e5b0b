"""Calibrated confidence and abstention in POST /query: min_conf, abstained, and where calibrations are found."""

import pytest

from birdsearch.engine.confidence import apply_min_conf, calibration_for
from birdsearch.engine.schemas import SpeciesHit, TimelineWindow, WindowSpecies
from birdsearch.errors import ConfigError
from birdsearch.model.calibration import FILE_NAME, Platt, save_calibration, sigmoid

FOCAL = "perch_21100_36_48_16k_10s.flac"


async def post(client, path, **form):
    with open(path, "rb") as f:
        return await client.post("/query", files={"audio": (path.name, f.read())}, data=form)


def hit(name, confidence):
    return SpeciesHit(species=name, common_name="", genus="", family="", order="", score=0.5, windows=1,
                      best_window=0, image_id=0, thumbnail_url="", confidence=confidence)  # fmt: skip


def window(*pairs):
    return TimelineWindow(index=0, start_s=0, end_s=10,
                          species=[WindowSpecies(species=n, common_name="", score=0.5, confidence=c) for n, c in pairs])  # fmt: skip


def test_min_conf_keeps_what_reaches_it_and_abstains_on_nothing():
    species = [hit("A", 0.9), hit("B", 0.2)]
    images = [type("I", (), {"species": s})() for s in ("A", "B", "A")]
    timeline = [window(("A", 0.9), ("B", 0.2)), window(("B", 0.3))]
    kept, photos, windows, reason, _ = apply_min_conf(species, images, timeline, 0.5)
    assert [h.species for h in kept] == ["A"] and [p.species for p in photos] == ["A", "A"]
    assert [[s.species for s in w.species] for w in windows] == [["A"], []]
    assert [w.abstained for w in windows] == [False, True] and reason is None
    assert [w.reason for w in windows] == [None, "below_min_conf"]
    assert apply_min_conf(species, images, timeline, 0.95)[3] == "below_min_conf"  # nothing left anywhere
    assert apply_min_conf(species, images, timeline, None) == (species, images, timeline, None, None)


def test_a_novel_window_abstains_with_its_reason_and_shows_its_species_only_when_asked():
    species = [hit("A", 0.9), hit("B", 0.0)]  # B's confidence: its best in the windows that are not novel
    images = [type("I", (), {"species": s})() for s in ("A", "B")]
    novel = window(("B", 0.95)).model_copy(update={"abstained": True, "reason": "novel", "novelty": 3.0})
    timeline = [window(("A", 0.9)), novel]
    kept, photos, windows, reason, _ = apply_min_conf(species, images, timeline, 0.5)
    assert [h.species for h in kept] == ["A"] and [p.species for p in photos] == ["A"]
    assert windows[1].species == [] and windows[1].reason == "novel" and reason is None
    everywhere = apply_min_conf(species, images, [novel, novel], 0.5)
    assert everywhere[3] == "novel" and "not in this gallery" in everywhere[4] and everywhere[0] == []
    listed, photos, windows, reason, _ = apply_min_conf(
        species, images, [novel, novel], 0.5, include_abstained=True
    )
    assert reason == "novel" and [(h.species, h.detected) for h in listed] == [("A", False), ("B", False)]
    assert [(s.species, s.detected) for s in windows[0].species] == [("B", False)] and len(photos) == 2


def test_calibrations_are_found_beside_the_encoder_and_the_index(tmp_path):
    encoder, index = tmp_path / "encoder", tmp_path / "index"
    save_calibration(encoder / FILE_NAME, "distilled", Platt((10.0,), -3.0))
    save_calibration(index / FILE_NAME, "cascade", Platt((5.0,), -1.0))
    assert calibration_for("distilled", "", str(encoder), index) == Platt((10.0,), -3.0)
    assert calibration_for("cascade", "", str(encoder), index) == Platt((5.0,), -1.0)
    assert calibration_for("distilled", "", "", index) is None
    assert calibration_for("cascade", "", str(encoder), tmp_path) is None
    given = tmp_path / "both.json"
    save_calibration(given, "cascade", Platt((2.0,), 0.0))
    assert calibration_for("cascade", str(given), str(encoder), index) == Platt((2.0,), 0.0)
    assert calibration_for("distilled", str(given), str(encoder), index) is None  # the file has no entry
    with pytest.raises(ConfigError, match="does not exist"):
        calibration_for("cascade", str(tmp_path / "missing.json"), "", index)


def test_a_bad_calibration_setting_is_refused_at_start(settings_for, tmp_path):
    bad = tmp_path / "calibration.json"
    bad.write_text("{}")
    with pytest.raises(Exception, match="not a calibration file"):
        settings_for(calibration=str(bad))


def test_answers_carry_calibrated_confidence_and_abstain(api, helpers, tmp_path):
    path = helpers.audio_file(FOCAL)
    platt = Platt((8.0,), -2.0)
    calibration = save_calibration(tmp_path / "calibration.json", "distilled", platt)

    async def main():
        async with api(calibration=str(calibration)) as (_, client):
            plain = await post(client, path, mode="distilled", species_k="3")
            low = await post(client, path, mode="distilled", species_k="3", min_conf="0")
            high = await post(client, path, mode="distilled", species_k="3", min_conf="1")
            cascade = await post(client, path, mode="cascade", min_conf="0.5")
        return plain, low, high, cascade

    plain, low, high, cascade = helpers.run(main())
    assert plain.status_code == 200, plain.text
    body = plain.json()
    assert body["min_conf"] is None and body["abstained"] is False
    for species in body["species"]:
        assert species["confidence"] == pytest.approx(float(sigmoid(8.0 * species["score"] - 2.0)), abs=1e-4)
    window = body["timeline"][0]["species"][0]
    assert window["confidence"] == pytest.approx(float(sigmoid(8.0 * window["score"] - 2.0)), abs=1e-4)
    assert low.json()["species"] == body["species"] and low.json()["abstained"] is False
    refused = high.json()
    assert refused["abstained"] is True and refused["species"] == [] and refused["images"] == []
    assert "threshold of 1" in refused["message"] and all(w["abstained"] for w in refused["timeline"])
    assert cascade.status_code == 422 and "calibration for mode 'cascade'" in cascade.json()["detail"]


def test_without_a_calibration_confidence_is_null(api, helpers):
    path = helpers.audio_file(FOCAL)

    async def main():
        async with api(calibration="") as (_, client):
            return await post(client, path, mode="cascade", species_k="2")

    answer = helpers.run(main())
    assert answer.status_code == 200, answer.text
    assert all(s["confidence"] is None for s in answer.json()["species"])


def test_the_query_table_shows_confidence_and_abstention():
    from birdsearch.client import render_table

    facts = {"duration_s": 20.0, "windows": 2, "window_s": 10, "hop_s": 10, "model": {"mode": "distilled"},
             "index": {"name": "v1", "count": 3}, "timings_ms": {"total": 5}}  # fmt: skip
    species = {"species": "Apus apus", "common_name": "", "score": 0.61, "windows": 1, "confidence": 0.87}
    answered = {"query": facts, "species": [species], "images": [], "abstained": False,
                "timeline": [{"start_s": 0, "end_s": 10, "species": [species], "abstained": False},
                             {"start_s": 10, "end_s": 20, "species": [], "abstained": True}]}  # fmt: skip
    table = render_table(answered)
    assert "0.87" in table and "nothing above the threshold" in table
    abstained = {**answered, "species": [], "abstained": True, "message": "no species reached the confidence "
                 "threshold of 0.5", "timeline": answered["timeline"][1:]}  # fmt: skip
    assert "threshold of 0.5" in render_table(abstained)
    assert " - " in render_table({**answered, "species": [{**species, "confidence": None}]})


def test_fitting_a_calibration_for_an_existing_encoder(tmp_path, index_root, tiny_models, helpers):
    """python -m birdsearch.engine.calibrate: val rows of a manifest plus background and outside recordings,
    a reference built from the train rows for an encoder that has none, both files written where asked."""
    import shutil

    import numpy as np
    import soundfile as sf

    from birdsearch.engine.calibrate import main
    from birdsearch.model.calibration import load_calibration
    from birdsearch.model.novelty import OPEN_SET_FILE, load_open_set, load_reference

    encoder = shutil.copytree(tiny_models["encoder"], tmp_path / "encoder")  # the reference goes beside it
    wind = tmp_path / "wind"
    wind.mkdir()
    rng = np.random.default_rng(0)
    sf.write(wind / "wind.wav", 0.05 * rng.standard_normal(48_000 * 5).astype(np.float32), 48_000)
    t = np.arange(48_000 * 12) / 48_000
    sf.write(tmp_path / "engine.wav", (0.3 * np.sin(2 * np.pi * 90 * t) * np.sin(2 * np.pi * 0.5 * t)).astype(np.float32),
             48_000)  # fmt: skip
    clips = tmp_path / "clips.csv"
    focal, scape = helpers.audio_file(FOCAL), helpers.audio_file("birdnet_soundscape_48k_30s.flac")
    clips.write_text(f"path,species,split\n{focal},Turdus migratorius,val\n{scape},Junco hyemalis,val\n"
                     f"{scape},Turdus merula,train\n{focal},Turdus migratorius,train\n")  # fmt: skip
    out = tmp_path / "calibration.json"
    argv = ["--index-root", str(index_root), "--checkpoint", str(encoder), "--clips", str(clips),
            "--background", str(wind / "*.wav"), "--outside", f"non_bird={tmp_path / 'engine.wav'}",
            "--reference", str(clips), "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    fitted = load_calibration(out)["distilled"]
    assert fitted.facts["clips"] == 4 and fitted.facts["background_clips"] == 1  # the train rows are left out
    assert fitted.facts["outside_clips"] == 1
    assert fitted.facts["positives"] == 4  # one window of the focal recording, three of the soundscape
    gate = load_open_set(tmp_path / OPEN_SET_FILE)["distilled"]
    assert gate.facts["validation_windows"] == {"in_gallery": 4, "background": 1, "non_bird": 2}
    assert gate.signal in ("mahalanobis", "knn", "max_confidence") and gate.facts["reference_windows"] == 4
    reference = load_reference(encoder)
    assert reference is not None and len(reference.labels) == 4  # the train rows' windows: 3 + 1
    clips.write_text(f"path,species\n{focal},Nonexistent bird\n")
    assert (
        main([*argv[:6], "--device", "cpu", "--out", str(out)]) == 2
    )  # an unknown species: an error, no file
    assert load_calibration(out)["distilled"] == fitted
