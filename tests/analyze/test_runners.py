"""``analyze --url`` (a running server) and ``analyze --runner ray`` (Ray Data) write the detections the
in-process run writes, and list the same failures."""

from __future__ import annotations

import csv
import json
import shutil
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from birdsearch.analyze.config import AnalyzeConfig
from birdsearch.analyze.run import analyze
from birdsearch.model.calibration import Platt, save_calibration

RECORDINGS = ("perch_21100_36_48_16k_10s.flac", "maad_spinetail_44k1_12s.wav", "birdnet_soundscape_48k_30s.flac",
              "oss_empty_2c_44k1.wav")  # fmt: skip  # the last fails: no audio


@pytest.fixture(scope="module")
def card(tmp_path_factory, helpers) -> Path:
    folder = tmp_path_factory.mktemp("card")
    for name in RECORDINGS:
        shutil.copy(helpers.audio_file(name), folder / name)
    return folder


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> Path:
    return save_calibration(tmp_path_factory.mktemp("calibration") / "calibration.json", "distilled",
                            Platt((6.0,), -1.0))  # fmt: skip


def run_analyze(out: Path, card: Path, index_root: Path, encoder: Path, calibration: Path, **extra):
    config = AnalyzeConfig(inputs=[str(card)], out=out, index_root=index_root, checkpoint=str(encoder),
                           mode="distilled", device="cpu", formats=("csv", "jsonl"), min_conf=0.3, hop_s=5.0,
                           calibration=str(calibration), progress=False, workers=2, **extra)  # fmt: skip
    summary = analyze(config)
    rows = [json.loads(line) for line in (out / "combined.birdsearch.jsonl").read_text().splitlines()]
    with (out / "failures.csv").open(newline="") as f:
        failures = sorted((Path(r["file"]).name, r["code"]) for r in csv.DictReader(f))
    return summary, rows, failures


def assert_same_detections(rows: list[dict], expected: list[dict]) -> None:
    assert len(expected) > 3 and len(rows) == len(expected)
    for row, want in zip(rows, expected, strict=True):
        exact = ("file", "start_s", "end_s", "scientific", "common", "photo_id", "photo_license",
                 "photo_attribution", "photo_hash")  # fmt: skip
        assert {k: row.get(k) for k in exact} == {k: want.get(k) for k in exact}
        assert row["confidence"] == pytest.approx(
            want["confidence"], abs=1e-4
        )  # the API rounds it to 4 places
        assert row["score"] == pytest.approx(want["score"], abs=1e-5)
        assert row["photo_score"] == pytest.approx(want["photo_score"], abs=1e-5)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, card, index_root, tiny_models, calibration):
    return run_analyze(
        tmp_path_factory.mktemp("local"), card, index_root, tiny_models["encoder"], calibration
    )


def test_url_runner_writes_the_local_detections(tmp_path, card, index_root, tiny_models, calibration, helpers,
                                                local_run, server_env):  # fmt: skip
    _, expected, expected_failures = local_run
    root = helpers.copy_index(index_root, tmp_path / "index")
    env = server_env(root, BIRDSEARCH_CALIBRATION=str(calibration))
    with helpers.Server(env, log=tmp_path / "server.log") as server:
        summary, rows, failures = run_analyze(tmp_path / "remote", card, root, tiny_models["encoder"], calibration,
                                              url=server.url)  # fmt: skip
        assert summary.analysed == 3 and summary.failed == 1
        assert_same_detections(rows, expected)
        assert failures == expected_failures
        run = json.loads((tmp_path / "remote" / "run.json").read_text())
        assert run["runner"] == "url" and run["uploads"] == len(RECORDINGS)
        # A rerun with the same settings uploads nothing.
        assert run_analyze(tmp_path / "remote", card, root, tiny_models["encoder"], calibration,
                           url=server.url)[0].skipped == 3  # fmt: skip


def test_url_runner_stops_when_no_server_answers(tmp_path, card, index_root, tiny_models, calibration):
    from birdsearch.client import ServiceError

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServiceError, match="cannot reach the query service"):
        run_analyze(tmp_path / "none", card, index_root, tiny_models["encoder"], calibration,
                    url=f"http://127.0.0.1:{port}")  # fmt: skip
    assert not (tmp_path / "none").exists()  # nothing half-written


def test_ray_runner_writes_the_local_detections(
    tmp_path, card, index_root, tiny_models, calibration, local_run, local_ray
):
    _, expected, expected_failures = local_run
    summary, rows, failures = run_analyze(tmp_path / "ray", card, index_root, tiny_models["encoder"],
                                          calibration, runner="ray", batch_size=4)  # fmt: skip
    assert summary.analysed == 3 and summary.failed == 1
    assert_same_detections(rows, expected)
    assert failures == expected_failures
    run = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert run["runner"] == "ray" and run["windows"] >= 3


def test_every_door_gives_the_same_detections_for_one_recording(tmp_path, index_root, tiny_models, calibration,
                                                                helpers, server_env):  # fmt: skip
    """The API's timeline, ``analyze`` in-process and ``analyze --url`` are views of the engine's one
    per-window detection type: for the same recording they give the same detections."""
    from birdsearch.analyze.remote import RemoteAnalyser
    from birdsearch.analyze.run import load_engine
    from birdsearch.client import query_file
    from birdsearch.engine.batch import BatchRun
    from birdsearch.engine.detections import confident, from_timeline
    from birdsearch.engine.inputs import find_recordings

    folder = tmp_path / "card"
    folder.mkdir()
    shutil.copy(
        helpers.audio_file("birdnet_soundscape_48k_30s.flac"), folder / "soundscape.flac"
    )  # 30 s: 9 windows
    recordings, _ = find_recordings([str(folder)])
    root = helpers.copy_index(index_root, tmp_path / "index")

    def config(**extra) -> AnalyzeConfig:
        return AnalyzeConfig(inputs=[str(folder)], out=tmp_path / "out", index_root=root,
                             checkpoint=str(tiny_models["encoder"]), mode="distilled", device="cpu", min_conf=0.0,
                             species_k=3, hop_s=2.5, calibration=str(calibration), progress=False, **extra)  # fmt: skip

    def detections_of(runner) -> list:
        [(_, result)] = list(runner.run(recordings))
        return result.detections

    in_process = detections_of(BatchRun(load_engine(config()), config(), "cpu"))
    env = server_env(root, BIRDSEARCH_CALIBRATION=str(calibration))
    with helpers.Server(env, log=tmp_path / "server.log") as server:
        by_url = detections_of(RemoteAnalyser(config(url=server.url)))
        answer = query_file(recordings[0].path, server.url, 120.0, mode="distilled", species_k=3, hop_s=2.5)
    from_api = confident(from_timeline(answer["timeline"]), 0.0)  # min_conf 0 keeps every calibrated species

    assert len(in_process) == 3 * len(answer["timeline"]) == 27  # species_k a window, every window
    assert by_url == from_api  # one server, one answer each: the same values to the last digit
    for ours, theirs in zip(in_process, from_api, strict=True):
        floats = ("confidence", "photo_score", "score")  # another process batches the windows its own way
        assert replace(ours, **dict.fromkeys(floats, 0.0)) == replace(theirs, **dict.fromkeys(floats, 0.0))
        for name in floats:
            assert getattr(ours, name) == pytest.approx(getattr(theirs, name), abs=1e-5), name


def test_no_door_detects_in_a_window_the_gate_calls_novel(tmp_path, index_root, tiny_models, helpers, server_env,
                                                          local_ray):  # fmt: skip
    """A gate that calls about half the windows novel: in-process, on Ray, through a server (--url) and in
    the API's timeline, those windows give no detection and the others the same ones, at the gate's min_conf."""
    from birdsearch.analyze.remote import RemoteAnalyser
    from birdsearch.analyze.run import load_engine
    from birdsearch.client import query_file
    from birdsearch.engine.batch import BatchRun
    from birdsearch.engine.calibrate import model_outputs
    from birdsearch.engine.detections import confident, from_timeline
    from birdsearch.engine.inputs import find_recordings
    from birdsearch.model.novelty import OPEN_SET_FILE, OpenSet, save_open_set

    folder = tmp_path / "card"
    folder.mkdir()
    shutil.copy(helpers.audio_file("birdnet_soundscape_48k_30s.flac"), folder / "soundscape.flac")
    recordings, _ = find_recordings([str(folder)])
    root = helpers.copy_index(index_root, tmp_path / "index")
    calibration = save_calibration(tmp_path / "gated" / "calibration.json", "distilled", Platt((6.0,), -1.0))

    def config(**extra) -> AnalyzeConfig:
        return AnalyzeConfig(inputs=[str(folder)], out=tmp_path / "out", index_root=root,
                             checkpoint=str(tiny_models["encoder"]), mode="distilled", device="cpu", species_k=3,
                             hop_s=2.5, calibration=str(calibration), progress=False, **extra)  # fmt: skip

    engine = load_engine(config())
    outputs, _ = model_outputs(engine, recordings[0].path, hop_s=2.5)
    novelty = 1 - engine.score(outputs, 200, config().species_rule).confidence.max(axis=1)
    gate = OpenSet("max_confidence", float(np.median(novelty)), min_conf=0.05)
    save_open_set(calibration.with_name(OPEN_SET_FILE), "distilled", gate)
    novel = novelty > gate.threshold
    assert 0 < novel.sum() < len(novel) == 9

    def windows_of(runner) -> list:
        [(_, result)] = list(runner.run(recordings))
        return result.detections

    in_process = windows_of(BatchRun(load_engine(config()), config(), "cpu"))
    from birdsearch.analyze.distributed import RayAnalyser

    on_ray = windows_of(RayAnalyser(load_engine(config()), config(runner="ray", batch_size=4)))
    env = server_env(root, BIRDSEARCH_CALIBRATION=str(calibration))
    with helpers.Server(env, log=tmp_path / "server.log") as server:
        by_url = windows_of(RemoteAnalyser(config(url=server.url)))
        answer = query_file(recordings[0].path, server.url, 120.0, mode="distilled", species_k=3, hop_s=2.5)
    assert answer["min_conf"] == 0.05
    assert [w["reason"] == "novel" for w in answer["timeline"]] == novel.tolist()
    from_api = confident(from_timeline(answer["timeline"]), 0.05)
    starts = np.array([w["start_s"] for w in answer["timeline"]])
    detected = {d.start_s for d in in_process}
    assert detected and detected <= set(starts[~novel].tolist())
    for door in (on_ray, by_url, from_api):
        assert [(d.start_s, d.scientific) for d in door] == [(d.start_s, d.scientific) for d in in_process]
