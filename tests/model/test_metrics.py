"""Metrics against hand-computed cases and against a deliberately naive implementation.

The naive versions below compute each textbook metric from one explicit ranking, and average it over
every ordering of tied items (itertools.permutations): slow, obviously right, and the definition
that ``birdsearch.model.metrics`` computes in closed form.
"""

import itertools
import math

import numpy as np
import pytest

from birdsearch.model import metrics as m

# --- naive reference implementations -------------------------------------------------------------


def naive_rankings(scores):
    """Every ranking (list of item indices) consistent with descending scores, ties permuted."""
    groups = {}
    for i, s in enumerate(scores):
        groups.setdefault(s, []).append(i)
    ordered = [groups[s] for s in sorted(groups, reverse=True)]
    for choice in itertools.product(*(itertools.permutations(g) for g in ordered)):
        yield [i for group in choice for i in group]


def naive_ap(ranking, relevant):
    hits, total = 0, 0.0
    for rank, item in enumerate(ranking, start=1):
        if relevant[item]:
            hits += 1
            total += hits / rank
    return total / sum(relevant)


def naive_hit(ranking, relevant, k):
    return float(any(relevant[i] for i in ranking[:k]))


def naive_ndcg(ranking, relevant, k):
    dcg = sum(1 / math.log2(r + 2) for r, i in enumerate(ranking[:k]) if relevant[i])
    ideal = sum(1 / math.log2(r + 2) for r in range(min(k, sum(relevant))))
    return dcg / ideal


def averaged(metric, scores, relevant, *args):
    values = [metric(r, relevant, *args) for r in naive_rankings(list(scores))]
    return sum(values) / len(values)


# --- hand-computed cases -------------------------------------------------------------------------


def test_ap_by_hand():
    # ranking: rel, non, rel, non -> (1/1 + 2/3) / 2
    assert m.average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)


def test_single_relevant_item():
    scores = [0.9, 0.8, 0.7, 0.6]
    relevant = [0, 0, 1, 0]
    assert m.average_precision(scores, relevant) == pytest.approx(1 / 3)
    assert m.hit_at_k(scores, relevant, 1) == 0.0
    assert m.hit_at_k(scores, relevant, 3) == 1.0
    assert m.ndcg_at_k(scores, relevant, 10) == pytest.approx(1 / math.log2(4))


def test_no_relevant_item_is_undefined_not_zero():
    scores, relevant = [0.3, 0.2], [0, 0]
    assert math.isnan(m.average_precision(scores, relevant))
    assert math.isnan(m.ndcg_at_k(scores, relevant, 10))
    assert m.hit_at_k(scores, relevant, 1) == 0.0
    out = m.retrieval_metrics(np.array([[0.3, 0.2], [0.9, 0.1]]), np.array([5, 1]), np.array([1, 2]))
    assert out["queries_without_relevant"] == 1
    assert out["mAP"] == pytest.approx(1.0)  # only the answerable query counts
    assert out["R@1"] == pytest.approx(1.0)


def test_all_tied_scores_give_the_expected_value():
    # Two items, one relevant, tied: the relevant one is first half of the time.
    assert m.average_precision([0.5, 0.5], [1, 0]) == pytest.approx((1 + 1 / 2) / 2)
    assert m.hit_at_k([0.5, 0.5], [1, 0], 1) == pytest.approx(0.5)
    assert m.ndcg_at_k([0.5, 0.5], [1, 0], 1) == pytest.approx(0.5)
    assert m.top1_correct([0.5, 0.5, 0.1], 0) == pytest.approx(0.5)


def test_ties_do_not_depend_on_gallery_order():
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.1])
    relevant = np.array([0, 1, 0, 0, 1])
    flipped = m.average_precision(scores[::-1], relevant[::-1])
    assert m.average_precision(scores, relevant) == pytest.approx(flipped)


def test_auroc_by_hand():
    # positives 0.9, 0.4; negatives 0.5, 0.4: pairs (0.9>0.5, 0.9>0.4, 0.4<0.5, 0.4=0.4 -> 0.5) = 2.5/4
    assert m.auroc([0.9, 0.4, 0.5, 0.4], [1, 1, 0, 0]) == pytest.approx(2.5 / 4)
    assert math.isnan(m.auroc([0.1, 0.2], [1, 1]))


def test_vote_top1():
    labels = np.array([0, 1, 1, 2, 0])
    # top 3 by score: items 0 (label 0), 1 (label 1), 2 (label 1) -> 1 wins by count
    assert m.vote_top1(np.array([0.9, 0.8, 0.7, 0.1, 0.0]), labels, k=3) == 1
    # top 2: one vote each for labels 0 and 1; the best-ranked image (label 0) breaks the tie
    assert m.vote_top1(np.array([0.9, 0.8, 0.7, 0.1, 0.0]), labels, k=2) == 0


def test_classification_and_cmap_by_hand():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    labels = np.array([0, 1, 1])
    out = m.classification_metrics(scores, labels)
    assert out["top1"] == pytest.approx(2 / 3)
    # class 0 ranks clips 0 (pos), 2, 1 -> AP 1; class 1 ranks 1 (pos), 2 (pos), 0 -> AP 1
    assert out["cmAP"] == pytest.approx(1.0)
    scores[2] = [0.95, 0.05]  # class 0 now ranks clip 2 (neg) first -> AP 1/2
    assert m.classification_metrics(scores, labels)["per_class_AP"][0] == pytest.approx(0.5)


def test_multilabel_metrics_by_hand():
    scores = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.7], [0.1, 0.2, 0.3]])
    positives = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], dtype=bool)
    out = m.multilabel_metrics(scores, positives)
    assert out["top1"] == pytest.approx(1.0)  # over the two segments with a species
    assert out["segments_with_species"] == 2
    assert out["cmAP"] == pytest.approx(1.0)
    assert out["AUROC"] == pytest.approx(1.0)


def test_interpolated_precision():
    levels = np.array([0.0, 0.5, 1.0])
    # ranking rel, non, rel: precision 1, .5, .667; recall .5, .5, 1
    out = m.interpolated_precision([0.9, 0.8, 0.7], [1, 0, 1], levels)
    np.testing.assert_allclose(out, [1.0, 1.0, 2 / 3])


# --- against the naive implementation, on random cases full of ties ------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_closed_forms_equal_the_naive_average_over_tie_orderings(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 8))
    scores = rng.integers(0, 3, size=n).astype(float)  # few distinct values: many ties
    relevant = rng.random(n) < 0.4
    if not relevant.any():
        relevant[rng.integers(n)] = True
    assert m.average_precision(scores, relevant) == pytest.approx(averaged(naive_ap, scores, relevant))
    for k in (1, 2, 3, 10):
        assert m.hit_at_k(scores, relevant, k) == pytest.approx(averaged(naive_hit, scores, relevant, k))
        assert m.ndcg_at_k(scores, relevant, k) == pytest.approx(averaged(naive_ndcg, scores, relevant, k))


def test_without_ties_equals_the_textbook_ranking():
    rng = np.random.default_rng(7)
    scores = rng.random(200)
    relevant = rng.random(200) < 0.1
    ranking = list(np.argsort(-scores))
    assert m.average_precision(scores, relevant) == pytest.approx(naive_ap(ranking, relevant))
    assert m.ndcg_at_k(scores, relevant, 10) == pytest.approx(naive_ndcg(ranking, relevant, 10))


def test_auroc_equals_pair_counting():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=30).astype(float)
    positive = rng.random(30) < 0.5
    pairs = [1.0 if p > q else 0.5 if p == q else 0.0 for p in scores[positive] for q in scores[~positive]]
    assert m.auroc(scores, positive) == pytest.approx(np.mean(pairs))


# --- bootstrap intervals ---------------------------------------------------------------------------


def naive_bootstrap_distribution(values, strata):
    """Every equally likely two-level resample, enumerated: runs with replacement, items within strata.

    Returns the exact distribution of the query-averaged statistic as (value, probability) pairs.
    """
    runs, n = values.shape
    groups = [[i for i in range(n) if strata[i] == s] for s in sorted(set(strata))]
    item_choices = list(itertools.product(*(itertools.product(g, repeat=len(g)) for g in groups)))
    run_choices = list(itertools.product(range(runs), repeat=runs))
    weight = 1.0 / (len(item_choices) * len(run_choices))
    out = {}
    for drawn_runs in run_choices:
        for choice in item_choices:
            items = [i for group in choice for i in group]
            value = sum(sum(values[r, i] for i in items) / len(items) for r in drawn_runs) / runs
            key = round(value, 12)
            out[key] = out.get(key, 0.0) + weight
    return sorted(out.items())


def test_bootstrap_replicates_follow_the_enumerated_distribution():
    values = np.array([[0.1, 0.9, 0.5, 0.3, 0.8], [0.2, 0.6, 0.4, 0.7, 1.0]])
    strata = np.array([0, 0, 1, 1, 1])
    exact = naive_bootstrap_distribution(values, strata)
    drawn = m.bootstrap_replicates(m.query_mean(values), 2, strata, resamples=20000, seed=1)
    support = np.array([v for v, _ in exact])
    cdf = np.cumsum([p for _, p in exact])
    empirical = np.searchsorted(np.sort(drawn), support + 1e-12, side="left") / len(drawn)
    assert np.max(np.abs(empirical - cdf)) < 0.015  # Kolmogorov distance of 20000 draws
    point, low, high = m.bootstrap_interval(m.query_mean(values), 2, strata, resamples=20000, seed=1)
    assert point == pytest.approx(values.mean())
    assert (low, high) == pytest.approx(tuple(np.quantile(drawn, [0.025, 0.975])))
    assert low < point < high


def test_stratified_resample_keeps_each_species_count():
    strata = np.array([3, 3, 3, 1, 1, 7])
    rng = np.random.default_rng(0)
    for _ in range(50):
        items = m.stratified_resample(strata, rng)
        assert sorted(strata[items].tolist()) == sorted(strata.tolist())


def test_class_mean_weights_species_equally_and_cmap_of_matches_class_mean_ap():
    values = np.array([[1.0, 1.0, 1.0, 0.0]])  # species 0: three queries at 1; species 1: one at 0
    labels = np.array([0, 0, 0, 1])
    assert m.class_mean(values, labels)(0, np.arange(4)) == pytest.approx(0.5)
    assert m.query_mean(values)(0, np.arange(4)) == pytest.approx(0.75)
    rng = np.random.default_rng(2)
    scores, positives = rng.random((2, 9, 3)), rng.random((9, 3)) < 0.4
    items = np.array([0, 0, 3, 5, 8, 2])
    assert m.cmap_of(scores, positives)(1, items) == pytest.approx(
        m.class_mean_ap(scores[1, items], positives[items])[0]
    )


def test_bootstrap_interval_is_a_point_when_nothing_varies_and_refuses_bad_arguments():
    values = np.full((3, 6), 0.4)
    assert m.bootstrap_interval(m.query_mean(values), 3, np.arange(6) % 2, resamples=50) == pytest.approx(
        (0.4, 0.4, 0.4)
    )
    with pytest.raises(ValueError, match="at least one run"):
        m.bootstrap_interval(m.query_mean(values), 0, np.zeros(6))
    with pytest.raises(ValueError, match="level"):
        m.bootstrap_interval(m.query_mean(values), 3, np.zeros(6), level=1.5)


def test_a_paired_difference_separates_what_two_overlapping_intervals_do_not():
    """Two methods whose queries vary widely, one always 0.05 above the other on the same query."""
    rng = np.random.default_rng(4)
    strata = np.repeat(np.arange(6), 4)
    base = rng.random((3, 24))
    better, worse = m.query_mean(base + 0.05), m.query_mean(base)
    a = m.bootstrap_interval(better, 3, strata, resamples=300)
    b = m.bootstrap_interval(worse, 3, strata, resamples=300)
    assert a[1] < b[2]  # the two intervals overlap
    diff = m.bootstrap_interval(m.difference(better, worse), 3, strata, resamples=300)
    assert diff == pytest.approx((0.05, 0.05, 0.05))  # paired: the same resamples for both
    draws = m.bootstrap_draws(3, strata, 300, seed=0)
    assert m.bootstrap_interval(better, 3, strata, resamples=300, draws=draws) == pytest.approx(a)


def test_genus_ap_counts_every_photo_of_the_querys_genus():
    genus_of = np.array([0, 0, 1])  # species 0 and 1 share a genus
    gallery = np.array([1, 2, 0, -1])  # the last photo is of a species outside the evaluation
    scores = np.array([[0.9, 0.8, 0.1, 0.95], [0.1, 0.9, 0.2, 0.3]])
    ap = m.genus_ap(scores, np.array([0, 2]), gallery, genus_of)
    # query 0 (genus 0): ranking 3(-), 0(+), 1(-), 2(+) -> (1/2 + 2/4) / 2; query 1 (genus 1): photo 1 first
    assert ap == pytest.approx([0.5, 1.0])
