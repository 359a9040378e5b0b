"""Platt calibration, ECE and the calibration file (birdsearch.model.calibration)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from birdsearch.errors import ConfigError
from birdsearch.model import calibration as cal


def naive_ece(conf, labels, bins=15):
    """ECE with plain loops: bin i holds (i/bins, (i+1)/bins], the first bin also 0."""
    total = 0.0
    for i in range(bins):
        lo, hi = i / bins, (i + 1) / bins
        members = [(c, y) for c, y in zip(conf, labels, strict=True) if (lo < c <= hi) or (i == 0 and c == 0)]
        if members:
            accuracy = sum(y for _, y in members) / len(members)
            mean = sum(c for c, _ in members) / len(members)
            total += len(members) / len(conf) * abs(accuracy - mean)
    return total


def test_ece_matches_naive_loops():
    rng = np.random.default_rng(0)
    conf = rng.uniform(size=500)
    conf[:5] = [0.0, 1.0, 1 / 15, 2 / 15, 0.5]
    labels = rng.uniform(size=500) < conf**2
    assert cal.expected_calibration_error(conf, labels) == pytest.approx(naive_ece(conf, labels))
    assert cal.expected_calibration_error(conf, labels, bins=4) == pytest.approx(naive_ece(conf, labels, 4))


def test_ece_hand_made():
    # all at 0.9, 9 of 10 right: calibrated; all at 0.9, half right: 0.4 off
    assert cal.expected_calibration_error([0.9] * 10, [1] * 9 + [0]) == pytest.approx(0.0)
    assert cal.expected_calibration_error([0.9] * 10, [1] * 5 + [0] * 5) == pytest.approx(0.4)
    assert cal.expected_calibration_error([], []) == 0.0


def test_platt_recovers_a_logistic_model():
    rng = np.random.default_rng(1)
    scores = rng.uniform(-0.2, 0.8, size=20000)
    labels = rng.uniform(size=scores.size) < cal.sigmoid(12.0 * scores - 4.0)
    platt = cal.fit_platt(scores, labels)
    assert platt.a == pytest.approx(12.0, rel=0.1)
    assert platt.b == pytest.approx(-4.0, rel=0.1)
    assert cal.expected_calibration_error(platt(scores), labels) < 0.02
    assert platt.facts["positives"] == int(labels.sum())


def test_platt_separable_classes_stay_finite_and_ordered():
    platt = cal.fit_platt([0.1, 0.2, 0.3, 0.7, 0.8], [0, 0, 0, 1, 1])
    assert np.isfinite([platt.a, platt.b]).all()
    conf = platt(np.array([0.1, 0.5, 0.8]))
    assert conf[0] < 0.5 < conf[2] and conf[0] < conf[1] < conf[2]


def test_unscored_species_have_zero_confidence():
    platt = cal.Platt(10.0, -3.0)
    out = platt(np.array([[-np.inf, 0.3], [1.0, -np.inf]]))
    assert out[0, 0] == 0.0 and out[1, 1] == 0.0
    assert out[0, 1] == pytest.approx(0.5)
    assert float(platt(0.3)) == pytest.approx(0.5)


def test_fit_refuses_one_class_and_bad_input():
    with pytest.raises(ConfigError, match="positive and negative"):
        cal.fit_platt([0.1, 0.2], [0, 0])
    with pytest.raises(ConfigError, match="finite"):
        cal.fit_platt([0.1, -np.inf], [0, 1])
    with pytest.raises(ConfigError, match="3 scores but 2 labels"):
        cal.fit_platt([0.1, 0.2, 0.3], [0, 1])


def test_window_examples_background_windows_are_all_negatives():
    per_window = np.array([[0.5, -np.inf, 0.2], [0.1, 0.3, -np.inf]], dtype=np.float32)
    scores, labels = cal.window_examples(per_window, [{0}, set()])
    assert scores.tolist() == pytest.approx([0.5, 0.2, 0.1, 0.3])
    assert labels.tolist() == [True, False, False, False]
    with pytest.raises(ConfigError, match="2 windows but 1 label sets"):
        cal.window_examples(per_window, [{0}])


def test_file_round_trip_keeps_other_modes(tmp_path):
    path = tmp_path / "calibration.json"
    cal.save_calibration(path, "distilled", cal.Platt(5.0, -2.0, {"ece": 0.01}))
    cal.save_calibration(path, "cascade", cal.Platt(7.0, -1.0))
    loaded = cal.load_calibration(path)
    assert loaded["distilled"] == cal.Platt(5.0, -2.0) and loaded["distilled"].facts == {"ece": 0.01}
    assert loaded["cascade"] == cal.Platt(7.0, -1.0)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", "not readable JSON"),
        (json.dumps({"format": "other"}), "not a calibration file"),
        (json.dumps({"format": cal.FORMAT, "format_version": 99}), "version 99"),
        (json.dumps({"format": cal.FORMAT, "format_version": 1, "modes": {"distilled": {"a": "x"}}}), "numbers"),
        (json.dumps({"format": cal.FORMAT, "format_version": 1, "modes": {"cascade": {"a": 1, "b": "nan"}}}),
         "finite"),
    ],
)  # fmt: skip
def test_bad_files_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "calibration.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        cal.load_calibration(path)
    with pytest.raises(ConfigError, match="does not exist"):
        cal.load_calibration(tmp_path / "missing.json")
