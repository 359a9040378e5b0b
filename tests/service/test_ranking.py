"""Aggregation of per-window hits, against a plain-loop version and hand-made cases."""

import numpy as np
import pytest

from birdsearch.service import ranking


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
    got = ranking.species_scores(scores, ids, image_species, n_species)
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
    got = ranking.species_scores(scores, ids, image_species, 3)
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
