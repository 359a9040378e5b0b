"""What a run shows of its detections: BirdNET's merging of consecutive windows, names, paths."""

from dataclasses import replace
from pathlib import Path

import pytest

from birdsearch.analyze.present import Presentation, merge_consecutive
from birdsearch.engine.detections import Detection, RecordingResult
from birdsearch.model.locales import read_local_names

MULTILINGUAL = Path(__file__).parents[1] / "data" / "world_lists" / "ioc_multilingual_v14.1.csv"


def heard(start: float, species: str, confidence: float, window_s: float = 10.0, photo: int = 0) -> Detection:
    common = {"Turdus migratorius": "American Robin", "Anas platyrhynchos": "Mallard"}[species]
    return Detection(
        start, start + window_s, species, common, confidence, photo, confidence, species_code="c"
    )


def spans(detections):
    return [(d.scientific.split()[0], d.start_s, d.end_s, d.confidence) for d in detections]


def test_a_species_in_consecutive_windows_is_one_detection_with_the_mean_of_its_best_three():
    windows = [heard(0, "Turdus migratorius", 0.9), heard(10, "Turdus migratorius", 0.5, photo=7),
               heard(20, "Turdus migratorius", 0.7), heard(30, "Turdus migratorius", 0.6),
               heard(10, "Anas platyrhynchos", 0.4), heard(50, "Turdus migratorius", 0.8)]  # fmt: skip
    merged = merge_consecutive(windows, most=10)
    assert spans(merged) == [
        ("Turdus", 0, 40, pytest.approx((0.9 + 0.7 + 0.6) / 3)),  # 0-40 s: four windows, the best three
        ("Anas", 10, 20, 0.4),
        ("Turdus", 50, 60, 0.8),  # a gap of 10 s: a detection of its own
    ]
    assert merged[0].photo_id == 0 and merged[0].photo_score == 0.9  # the most confident window's photo
    assert spans(merge_consecutive(windows, most=2))[:2] == [
        ("Turdus", 0, 20, pytest.approx(0.7)),  # at most two windows a merge
        ("Anas", 10, 20, 0.4),
    ]
    assert merge_consecutive(windows, most=1) == windows and merge_consecutive(windows, most=0) == windows


def test_overlapping_windows_merge_and_the_order_is_by_time():
    windows = [heard(5, "Turdus migratorius", 0.3), heard(0, "Turdus migratorius", 0.6),
               heard(10, "Turdus migratorius", 0.2)]  # hop 5 s: every window overlaps the next  # fmt: skip
    assert spans(merge_consecutive(windows, most=3)) == [("Turdus", 0, 20, pytest.approx(1.1 / 3))]


def test_a_presentation_names_merges_and_keeps_paths_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cards").mkdir()
    result = RecordingResult("cards/dawn.flac", 30.0, 48_000,
                             [heard(0, "Turdus migratorius", 0.9), heard(10, "Turdus migratorius", 0.5)])  # fmt: skip
    german = read_local_names(MULTILINGUAL, "de")
    shown = Presentation(merge_consecutive=2, names=german)(result)
    assert shown.path == "cards/dawn.flac"  # relative stays relative
    assert spans(shown.detections) == [("Turdus", 0, 20, pytest.approx(0.7))]
    assert shown.detections[0].common == "Wanderdrossel"
    assert Presentation(absolute_paths=True)(result).path == str(tmp_path / "cards" / "dawn.flac")
    assert Presentation()(result) == result
    assert (
        Presentation(names=german).digest()
        != Presentation().digest()
        != Presentation(merge_consecutive=3).digest()
    )
    assert replace(result, detections=[]) == Presentation(merge_consecutive=5)(replace(result, detections=[]))
