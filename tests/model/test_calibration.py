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
    assert platt.weights[0] == pytest.approx(12.0, rel=0.1)
    assert platt.bias == pytest.approx(-4.0, rel=0.1)
    assert cal.expected_calibration_error(platt(scores), labels) < 0.02
    assert platt.facts["positives"] == int(labels.sum())


def test_platt_separable_classes_stay_finite_and_ordered():
    platt = cal.fit_platt([0.1, 0.2, 0.3, 0.7, 0.8], [0, 0, 0, 1, 1])
    assert np.isfinite([*platt.weights, platt.bias]).all()
    conf = platt(np.array([0.1, 0.5, 0.8]))
    assert conf[0] < 0.5 < conf[2] and conf[0] < conf[1] < conf[2]


def test_unscored_species_have_zero_confidence():
    platt = cal.Platt((10.0,), -3.0)
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
    cal.save_calibration(path, "distilled", cal.Platt((5.0,), -2.0, facts={"ece": 0.01}))
    cal.save_calibration(path, "cascade", cal.Platt((7.0, 3.0), -1.0, ("score", "contrast")))
    loaded = cal.load_calibration(path)
    assert loaded["distilled"] == cal.Platt((5.0,), -2.0) and loaded["distilled"].facts == {"ece": 0.01}
    assert loaded["cascade"] == cal.Platt((7.0, 3.0), -1.0, ("score", "contrast"))


def test_the_file_follows_the_umask_so_that_colleagues_can_read_it(tmp_path, umask):
    umask(0o022)
    path = cal.save_calibration(tmp_path / "calibration.json", "cascade", cal.Platt((7.0,), -1.0))
    assert path.stat().st_mode & 0o777 == 0o644
    umask(0o077)
    cal.save_calibration(path, "distilled", cal.Platt((5.0,), -2.0))  # replaced: the new file's mode
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", "not readable JSON"),
        (json.dumps({"format": "other"}), "not a calibration file"),
        (json.dumps({"format": cal.FORMAT, "format_version": 99}), "version 99"),
        (json.dumps({"format": cal.FORMAT, "format_version": 1, "modes": {"distilled": {"weights": "x"}}}),
         "needs 'features'"),
        (json.dumps({"format": cal.FORMAT, "format_version": 1,
                     "modes": {"cascade": {"features": ["score"], "weights": [1], "bias": "nan"}}}), "not finite"),
        (json.dumps({"format": cal.FORMAT, "format_version": 1,
                     "modes": {"cascade": {"features": ["loudness"], "weights": [1], "bias": 0}}}), "loudness"),
    ],
)  # fmt: skip
def test_bad_files_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "calibration.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        cal.load_calibration(path)
    with pytest.raises(ConfigError, match="does not exist"):
        cal.load_calibration(tmp_path / "missing.json")


def test_contrast_is_the_score_minus_the_window_mean():
    per_window = np.array([[0.6, 0.2, -np.inf], [0.5, 0.5, 0.5]])
    x = cal.window_features(per_window, ("score", "contrast", "zscore"))
    assert x[0, 0].tolist() == pytest.approx([0.6, 0.2, 1.0])  # std of (0.6, 0.2) is 0.2
    assert x[0, 1].tolist() == pytest.approx([0.2, -0.2, -1.0])
    assert np.isnan(x[0, 2]).all()
    assert x[1, :, 1].tolist() == pytest.approx([0.0, 0.0, 0.0])
    assert x[1, :, 2].tolist() == pytest.approx([0.0, 0.0, 0.0])  # no spread: nothing stands out
    assert np.isnan(cal.window_features(np.full((1, 2), -np.inf), ("zscore",))).all()
    with pytest.raises(ConfigError, match="loudness"):
        cal.window_features(per_window, ("loudness",))


def diffuse_world(rng, recordings=40, species=8):
    """Windows where the true species stands out from its window's others, but a window of noise
    scores every species high (like a diffuse mixture): the raw score misleads, the contrast does not."""
    per_windows, presents = [], []
    for r in range(recordings):
        if r % 4 == 0:  # background: everything high and flat
            per_windows.append(0.6 + 0.02 * rng.standard_normal((3, species)))
            presents.append([set(), set(), set()])
        else:
            base = 0.2 + 0.05 * rng.standard_normal((3, species))
            truth = int(rng.integers(species))
            base[:, truth] += 0.25
            per_windows.append(base)
            presents.append([{truth}] * 3)
    return per_windows, presents


def test_choose_platt_takes_the_contrast_when_the_raw_score_misleads():
    per_windows, presents = diffuse_world(np.random.default_rng(3))
    platt = cal.choose_platt(per_windows, presents)
    assert platt.features != ("score",)
    loss = platt.facts["cv_log_loss"]
    assert min(loss["score+contrast"], loss["score+zscore"]) < loss["score"]
    background = platt(per_windows[0])
    assert background.max() < 0.2  # a window of noise: nothing confident


def test_choose_platt_keeps_the_simpler_fit_when_the_score_suffices():
    rng = np.random.default_rng(4)
    per_windows, presents = [], []
    for _ in range(60):
        scores = rng.uniform(-0.2, 0.8, size=(2, 6))
        truth = rng.uniform(size=scores.shape) < cal.sigmoid(12 * scores - 5)
        per_windows.append(scores)
        presents.append([set(np.flatnonzero(row).tolist()) for row in truth])
    assert cal.choose_platt(per_windows, presents).features == ("score",)
