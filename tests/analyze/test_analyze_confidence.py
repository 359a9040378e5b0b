"""``analyze --min-conf`` on calibrated confidence: detections carry it beside the raw score; a threshold
nothing reaches gives no detection; the calibration is part of the settings a rerun compares."""

from __future__ import annotations

import json

import pytest

from birdsearch.analyze.config import AnalyzeConfig
from birdsearch.analyze.run import analyze
from birdsearch.model.calibration import Platt, save_calibration, sigmoid

FOCAL = "perch_21100_36_48_16k_10s.flac"


def run(tmp_path, index_root, encoder, recording, out: str, min_conf: float, platt: Platt | None):
    calibration = ""
    if platt is not None:
        calibration = str(save_calibration(tmp_path / f"{out}.json", "distilled", platt))
    config = AnalyzeConfig(inputs=[str(recording)], out=tmp_path / out, index_root=index_root,
                           checkpoint=str(encoder), device="cpu", formats=("jsonl",), min_conf=min_conf,
                           calibration=calibration, progress=False, workers=1)  # fmt: skip
    summary = analyze(config)
    lines = (tmp_path / out / "combined.birdsearch.jsonl").read_text().splitlines()
    return summary, [json.loads(line) for line in lines]


def test_min_conf_applies_to_the_calibrated_confidence(tmp_path, index_root, tiny_models, helpers):
    recording = helpers.audio_file(FOCAL)
    encoder = tiny_models["encoder"]
    platt = Platt((6.0,), -1.0)
    summary, rows = run(tmp_path, index_root, encoder, recording, "all", 0.0, platt)
    assert summary.detections == len(rows) > 0
    for row in rows:
        assert row["confidence"] == pytest.approx(float(sigmoid(6.0 * row["score"] - 1.0)), abs=1e-5)
    settings = json.loads((tmp_path / "all" / "run.json").read_text())["settings"]
    assert settings["calibration"] == {"features": ["score"], "weights": [6.0], "bias": -1.0}

    middle = sorted(row["confidence"] for row in rows)[len(rows) // 2]
    _, kept = run(tmp_path, index_root, encoder, recording, "some", middle, platt)
    assert kept and all(row["confidence"] >= middle for row in kept) and len(kept) < len(rows)

    summary, none = run(tmp_path, index_root, encoder, recording, "none", 0.999, Platt((1.0,), -20.0))
    assert summary.analysed == 1 and none == []  # wind-like: every confidence low, nothing listed


def test_without_a_calibration_min_conf_is_on_the_raw_score(tmp_path, index_root, tiny_models, helpers):
    _, rows = run(tmp_path, index_root, tiny_models["encoder"], helpers.audio_file(FOCAL), "raw", 0.0, None)
    assert rows and all(row["confidence"] == row["score"] for row in rows)
