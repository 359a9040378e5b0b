"""Aggregation of per-window hits, against a plain-loop version and hand-made cases."""

import numpy as np
import pytest

from birdsearch.engine import ranking
from birdsearch.errors import ConfigError


def naive_species(scores, ids, image_species, n_species):
    per_window = [[-np.inf] * n_species for _ in range(scores.shape[0])]
    for w in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            if ids[w, c] >= 0 and image_species[ids[w, c]] >= 0:
                s = image_species[ids[w, c]]
                per_window[w][s] = max(per_window[w][s], float(scores[w, c]))
    per_window = np.array(per_window, dtype=np.float32)
    recording = per_window.max(axis=0)
    votes = np.zeros(n_species, int)
    for w in range(scores.shape[0]):
        if np.isfinite(per_window[w]).any():
            votes[int(np.argmax(per_window[w]))] += 1
    return per_window, recording, votes


def naive_images(scores, ids, k):
    best = {}
    for w in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            i = int(ids[w, c])
            if i >= 0 and (i not in best or scores[w, c] > best[i][0]):
                best[i] = (float(scores[w, c]), w)
    ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))
    return [(i, s, w) for i, (s, w) in ranked[:k]]


def random_hits(seed, n_windows=7, candidates=9, n_images=30, n_species=5):
    rng = np.random.default_rng(seed)
    image_species = rng.integers(0, n_species, n_images).astype(np.int32)
    ids = np.stack([rng.choice(n_images, candidates, replace=False) for _ in range(n_windows)]).astype(
        np.int64
    )
    scores = np.sort(rng.uniform(-1, 1, (n_windows, candidates)).astype(np.float32), axis=1)[:, ::-1]
    ids[:, -2:] = -1  # fewer candidates than asked for
    scores[:, -2:] = -np.inf
    return scores, ids, image_species, n_species


@pytest.mark.parametrize("seed", range(5))
def test_species_scores_equal_the_plain_loop(seed):
    scores, ids, image_species, n_species = random_hits(seed)
    got = ranking.species_scores(scores, ids, image_species, n_species, "best")
    per_window, recording, votes = naive_species(scores, ids, image_species, n_species)
    np.testing.assert_array_equal(got.per_window, per_window)
    np.testing.assert_array_equal(got.recording, recording)
    np.testing.assert_array_equal(got.top_windows, votes)
    for s in range(n_species):
        if np.isfinite(recording[s]):
            assert per_window[got.best_window[s], s] == recording[s]
        else:
            assert got.best_window[s] == -1


@pytest.mark.parametrize("seed", range(5))
def test_best_images_equal_the_plain_loop(seed):
    scores, ids, _, _ = random_hits(seed)
    got = ranking.best_images(scores, ids, k=6)
    assert [(g.id, g.score, g.window) for g in got] == naive_images(scores, ids, 6)


def test_hand_made_soundscape():
    # window 0 hears species 0 (image 0), window 1 species 1 (image 2), window 2 species 1 again
    image_species = np.array([0, 0, 1, 1, 2], dtype=np.int32)
    ids = np.array([[0, 2, 4], [2, 1, 4], [3, 0, -1]])
    scores = np.array([[0.9, 0.5, 0.1], [0.8, 0.3, 0.2], [0.7, 0.6, -np.inf]], dtype=np.float32)
    got = ranking.species_scores(scores, ids, image_species, 3, "best")
    np.testing.assert_allclose(got.recording, [0.9, 0.8, 0.2])
    np.testing.assert_array_equal(got.top_windows, [1, 2, 0])
    np.testing.assert_array_equal(got.best_window, [0, 1, 1])
    assert list(ranking.top_species(got.recording, 2)) == [0, 1]
    assert [(h.id, h.window) for h in ranking.best_images(scores, ids, 3)] == [(0, 0), (2, 1), (3, 2)]
    assert ranking.best_image_of_species(scores, ids, image_species, 1) == 2
    assert ranking.best_image_of_species(scores, ids, image_species, 2) == 4


def test_absent_species_are_not_ranked_and_ties_go_to_the_lower_row():
    scores = np.array([-np.inf, 0.5, 0.5, -np.inf], dtype=np.float32)
    assert list(ranking.top_species(scores, 10)) == [1, 2]


def test_unknown_species_rows_are_ignored():
    image_species = np.array([-1, 0], dtype=np.int32)
    got = ranking.species_scores(np.array([[0.9, 0.4]], np.float32), np.array([[0, 1]]), image_species, 1)
    np.testing.assert_allclose(got.recording, [0.4])


# --- species rules: how a species' photos pool into its window score ---------------------------


def naive_rule(values, rule, n_photos):
    """One species' pooled score from its candidate scores, the plain way."""
    values = sorted(values, reverse=True)
    if rule.name == "best":
        return values[0]
    if rule.name == "mean-top":
        kept = values[: int(rule.parameter)]
        return sum(kept) / len(kept)
    if rule.name == "kth":
        k = max(1, int(np.ceil(rule.parameter * n_photos - 1e-9)))
        return values[min(k, len(values)) - 1]
    t = rule.parameter
    return t * np.log(np.mean(np.exp(np.array(values, np.float64) / t)))


RULES = ["best", "mean-top:1", "mean-top:3", "kth:0.25", "kth:1", "lme:0.05", "lme:2"]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("seed", range(4))
def test_every_rule_equals_the_plain_loop(rule, seed):
    scores, ids, image_species, n_species = random_hits(seed)
    parsed = ranking.parse_rule(rule)
    got = ranking.window_species_scores(scores, ids, image_species, n_species, rule)
    counts = np.bincount(image_species, minlength=n_species)
    for w in range(scores.shape[0]):
        for s in range(n_species):
            values = [
                float(scores[w, c])
                for c in range(scores.shape[1])
                if ids[w, c] >= 0 and image_species[ids[w, c]] == s
            ]
            want = naive_rule(values, parsed, counts[s]) if values else -np.inf
            np.testing.assert_allclose(got[w, s], want, rtol=1e-5, atol=1e-6)


def photo_count_case():
    """Species 0 has 1 photo (0.80); species 1 has 10, one lucky near-duplicate (0.85), the rest far."""
    image_species = np.array([0] + [1] * 10, dtype=np.int32)
    ids = np.arange(11)[None, :]
    scores = np.array([[0.80, 0.85, 0.30, 0.28, 0.26, 0.25, 0.24, 0.22, 0.21, 0.20, 0.19]], np.float32)
    order = np.argsort(-scores[0])
    return scores[:, order], ids[:, order], image_species


@pytest.mark.parametrize("rule", ["mean-top:3", "kth:0.25", "lme:0.1"])
def test_pooling_rules_undo_what_the_best_photo_rule_gives_to_many_photos(rule):
    scores, ids, image_species = photo_count_case()
    best = ranking.species_scores(scores, ids, image_species, 2, "best").recording
    pooled = ranking.species_scores(scores, ids, image_species, 2, rule).recording
    assert ranking.top_species(best, 1)[0] == 1  # the species with 10 photos wins on one lucky photo
    assert ranking.top_species(pooled, 1)[0] == 0  # pooled, the consistent match wins
    assert pooled[0] == pytest.approx(0.80)  # a single photo pools to itself under every rule


def test_lme_runs_from_the_best_photo_to_the_mean():
    scores, ids, image_species = photo_count_case()
    cold = ranking.window_species_scores(scores, ids, image_species, 2, "lme:0.0001")[0, 1]
    hot = ranking.window_species_scores(scores, ids, image_species, 2, "lme:1000")[0, 1]
    assert cold == pytest.approx(0.85, abs=1e-3)
    assert hot == pytest.approx(float(scores[image_species[ids] == 1].mean()), abs=1e-3)


@pytest.mark.parametrize(
    "text, message",
    [("median", "unknown species rule"), ("best:2", "takes no parameter"), ("lme", "needs a number"),
     ("mean-top:2.5", "whole number"), ("kth:0", r"in \(0, 1\]"), ("lme:-1", "positive temperature")],
)  # fmt: skip
def test_bad_rules_are_refused_with_the_fix(text, message):
    with pytest.raises(ConfigError, match=message):
        ranking.parse_rule(text)
    assert str(ranking.parse_rule("lme:0.10")) == "lme:0.1"
