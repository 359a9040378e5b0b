"""Real recordings the toy world never heard: the demo's encoder and index stay quiet about them.

None of the species in ``tests/data/audio`` (a European robin, a Red-faced Spinetail, a Ruffed Grouse
drumming, soundscapes from Pennsylvania and Ithaca, a clip from Perch's tests) is in the toy world.
Before the open-set gate, ``analyze`` at its default settings named a toy species in nearly every
window of such recordings; with the demo's calibration and gate at most one window in ten may give a
detection. Slow: it builds the default preset's demo (the world's recordings, the index, the fits).
"""

from __future__ import annotations

import argparse
import csv
import json

import pytest

from birdsearch.model import audio

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(toy_cache):
    """The default demo's encoder and index, calibrated and gated as ``birdsearch demo`` leaves them."""
    from birdsearch.toy.cli import build_index, calibrate, distil
    from birdsearch.toy.world import ensure_world

    world = ensure_world("default", progress=False)
    args = argparse.Namespace(rebuild=False, device="cpu")
    encoder = distil(world, world.student_spec, world.root / "demo" / "encoder-realistic", args)
    index_root = build_index(world, world.root / "demo" / "index", args)
    calibrate(world, encoder, world.student_spec, index_root, args)
    return encoder, index_root, world.student_spec


def test_analyze_detects_in_at_most_a_tenth_of_real_windows(demo, real_fixtures, tmp_path):
    from birdsearch.analyze.config import AnalyzeConfig
    from birdsearch.analyze.run import analyze

    encoder, index_root, student = demo
    out = tmp_path / "out"
    config = AnalyzeConfig(inputs=[str(real_fixtures / "audio")], out=out, index_root=index_root,
                           checkpoint=str(encoder), student=student, device="cpu", formats=("jsonl",),
                           progress=False)  # fmt: skip
    summary = analyze(config)
    with open(out / "failures.csv", newline="") as f:
        failed = {row["file"] for row in csv.DictReader(f)}
    assert summary.analysed >= 10 and len(failed) == summary.failed  # the empty and silent edge cases fail
    windows = 0
    for path in sorted((real_fixtures / "audio").iterdir()):
        if path.suffix != ".md" and str(path) not in failed:
            samples = audio.load(path).samples
            windows += len(audio.window_starts(len(samples), *audio.window_lengths(10.0, None, 48_000)))
    detections = [json.loads(line) for line in (out / "combined.birdsearch.jsonl").read_text().splitlines()]
    detected = {(d["file"], d["start_s"]) for d in detections}
    assert windows >= 15  # the fixtures are all there (short tails dropped as analyze drops them)
    assert len(detected) <= 0.1 * windows, sorted(detected)
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert settings["open_set"]["signal"] and settings["min_conf"] == settings["open_set"]["min_conf"]
