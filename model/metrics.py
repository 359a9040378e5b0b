"""Retrieval and classification metrics: pure functions of scores and labels (numpy in, floats out).

Shared by distillation (its validation each epoch) and evaluation (the paper's table).

Ties. Rank metrics are defined on a ranking, and tied scores do not define one. Every metric here is
the *expected* value over all orderings of tied items (McSherry & Najork, ECIR 2008), so that a
method is neither rewarded nor punished for the order in which it happens to list equal scores, and
the result does not depend on the order of the gallery. Without ties this is the ordinary metric.
``tests/model/test_metrics.py`` checks each one against a naive implementation that averages the
textbook metric over every permutation of the tied items.

A query with no relevant item has no average precision or nDCG: those functions return NaN, and the
aggregates (``retrieval_metrics``, ``class_mean_ap``) leave such queries or classes out and say how
many they left out.

Intervals (``bootstrap_interval``): a percentile bootstrap over training runs and over the items
(queries within their species, segments within their recording), for any of the metrics above, and
paired intervals of the difference between two methods (``difference``: the same resamples for both).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TieGroups:
    """A ranking by descending score, cut into groups of equal scores."""

    order: np.ndarray  # (N,) item indices, best first (stable, so deterministic)
    group: np.ndarray  # (N,) group id of each ranked position
    start: np.ndarray  # (G,) first ranked position of each group
    size: np.ndarray  # (G,) items in each group
    relevant: np.ndarray  # (G,) relevant items in each group


def tie_groups(scores: np.ndarray, relevant: np.ndarray) -> TieGroups:
    """Sort by descending score and group equal scores; ``relevant`` is a (N,) boolean mask."""
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if scores.shape != relevant.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} must be equal 1-d shapes")
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    new_group = np.ones(len(ranked), dtype=bool)
    new_group[1:] = ranked[1:] != ranked[:-1]
    group = np.cumsum(new_group) - 1
    start = np.flatnonzero(new_group)
    size = np.diff(np.append(start, len(ranked)))
    rel_per_group = np.bincount(group, weights=relevant[order], minlength=len(start))
    return TieGroups(order, group, start, size, rel_per_group.astype(np.int64))


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Expected average precision over tie orderings; NaN when nothing is relevant.

    Within a tie group of ``n`` items, ``r`` of them relevant, after ``t`` items of which ``c`` are
    relevant, the item at the group's i-th place is relevant with probability r/n, and then the
    relevant items above it within the group number (i-1)(r-1)/(n-1) on average (hypergeometric),
    so its expected precision term is (r/n)·(c + 1 + (i-1)(r-1)/(n-1)) / (t + i). By linearity the
    sum of these over all places, divided by the number of relevant items, is the expected AP.
    """
    g = tie_groups(scores, relevant)
    total = int(g.relevant.sum())
    if total == 0:
        return float("nan")
    before = np.concatenate(([0], np.cumsum(g.relevant)[:-1]))  # relevant items above each group
    position = np.arange(1, len(g.order) + 1)  # 1-based rank t + i
    gid = g.group
    n, r, c = g.size[gid], g.relevant[gid], before[gid]
    i = position - g.start[gid]  # 1-based place within the group
    within = np.where(n > 1, (i - 1) * (r - 1) / np.maximum(n - 1, 1), 0.0)
    terms = (r / n) * (c + 1 + within) / position
    return float(terms.sum() / total)


def hit_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Probability (over tie orderings) that at least one relevant item is in the top ``k``.

    This is what retrieval papers, and the mission's evaluation, call R@K.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    g = tie_groups(scores, relevant)
    if g.relevant.sum() == 0:
        return 0.0
    if k >= len(g.order):
        return 1.0
    boundary = int(g.group[k - 1])  # the group holding the k-th place
    if g.relevant[:boundary].sum() > 0:
        return 1.0
    n, r = int(g.size[boundary]), int(g.relevant[boundary])
    taken = k - int(g.start[boundary])  # places of the boundary group inside the top k
    # P(no relevant among `taken` drawn without replacement from n items, r relevant)
    miss = np.prod([(n - r - j) / (n - j) for j in range(taken)]) if n - r >= taken else 0.0
    return float(1.0 - miss)


recall_at_k = hit_at_k  # the name the retrieval literature uses for "a relevant item in the top K"


def ndcg_at_k(scores: np.ndarray, relevant: np.ndarray, k: int = 10) -> float:
    """Expected nDCG@k with binary gains over tie orderings; NaN when nothing is relevant.

    A place inside a tie group holds a relevant item with probability r/n, so the expected gain of
    each place is its group's fraction of relevant items (linearity of expectation).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    g = tie_groups(scores, relevant)
    total = int(g.relevant.sum())
    if total == 0:
        return float("nan")
    places = min(k, len(g.order))
    expected_gain = (g.relevant / g.size)[g.group[:places]]
    discounts = 1.0 / np.log2(np.arange(2, places + 2))
    ideal = discounts[: min(total, places)].sum()
    return float((expected_gain * discounts).sum() / ideal)


def vote_top1(scores: np.ndarray, gallery_labels: np.ndarray, k: int = 10) -> int:
    """The species the top ``k`` images vote for: most images wins, then the best-ranked image.

    Ranking uses a stable sort (score descending, then gallery order), so the answer is deterministic.
    """
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
    labels = np.asarray(gallery_labels)[order]
    species, first, counts = np.unique(labels, return_index=True, return_counts=True)
    best = np.lexsort((first, -counts))[0]  # most votes, then earliest first appearance
    return int(species[best])


def top1_correct(scores: np.ndarray, label: int) -> float:
    """1 if ``label`` has the highest score; 1/m when it ties with m-1 others for the highest."""
    scores = np.asarray(scores, dtype=np.float64)
    best = scores == scores.max()
    return float(best[label] / best.sum())


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U, a tie counted half); NaN without both classes."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(scores)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ascending ranks, ties given the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    ranked = values[order]
    new_group = np.ones(len(ranked), dtype=bool)
    new_group[1:] = ranked[1:] != ranked[:-1]
    group = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], len(ranked))
    mean_rank = (starts + 1 + ends) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(values))
    ranks[order] = mean_rank[group]
    return ranks


def interpolated_precision(scores: np.ndarray, relevant: np.ndarray, recall_levels: np.ndarray) -> np.ndarray:
    """Interpolated precision (max precision at any recall ≥ r) at each recall level, for PR plots.

    Ties are broken by the stable order; NaN everywhere when nothing is relevant.
    """
    relevant = np.asarray(relevant, dtype=bool)
    total = relevant.sum()
    if total == 0:
        return np.full(len(recall_levels), np.nan)
    hits = relevant[np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")]
    cum = np.cumsum(hits)
    precision = cum / np.arange(1, len(hits) + 1)
    recall = cum / total
    best_after = np.maximum.accumulate(precision[::-1])[::-1]  # max precision at this rank or deeper
    idx = np.searchsorted(recall, recall_levels, side="left")
    return np.where(idx < len(best_after), best_after[np.minimum(idx, len(best_after) - 1)], 0.0)


def nanmean(values: np.ndarray) -> float:
    """Mean over the finite values; NaN when there is none (instead of numpy's warning)."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def retrieval_metrics(
    scores: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    ks: tuple[int, ...] = (1, 5, 10),
    ndcg_k: int = 10,
    vote_k: int = 10,
) -> dict[str, object]:
    """Audio-to-image retrieval, any image of the query's species relevant.

    Args:
        scores: (Q, N) query-image similarities.
        query_labels: (Q,) species index of each query.
        gallery_labels: (N,) species index of each image (-1: a species outside the evaluation).
    Returns:
        means (``mAP``, ``R@k``, ``nDCG@k``, ``vote_top1``), the per-query arrays under
        ``per_query``, and ``queries_without_relevant`` (left out of mAP and nDCG).
    """
    scores = np.asarray(scores)
    query_labels = np.asarray(query_labels)
    gallery_labels = np.asarray(gallery_labels)
    if scores.shape != (len(query_labels), len(gallery_labels)):
        raise ValueError(
            f"scores {scores.shape} do not match {len(query_labels)} queries × {len(gallery_labels)} images"
        )
    per_query: dict[str, np.ndarray] = {"AP": np.empty(len(query_labels))}
    for k in ks:
        per_query[f"R@{k}"] = np.empty(len(query_labels))
    per_query[f"nDCG@{ndcg_k}"] = np.empty(len(query_labels))
    per_query["vote_correct"] = np.empty(len(query_labels))
    for q, (row, label) in enumerate(zip(scores, query_labels, strict=True)):
        relevant = gallery_labels == label
        per_query["AP"][q] = average_precision(row, relevant)
        for k in ks:
            per_query[f"R@{k}"][q] = hit_at_k(row, relevant, k)
        per_query[f"nDCG@{ndcg_k}"][q] = ndcg_at_k(row, relevant, ndcg_k)
        per_query["vote_correct"][q] = float(vote_top1(row, gallery_labels, vote_k) == label)
    answerable = np.isfinite(per_query["AP"])
    result: dict[str, object] = {"mAP": nanmean(per_query["AP"])}
    for k in ks:
        result[f"R@{k}"] = float(per_query[f"R@{k}"][answerable].mean()) if answerable.any() else float("nan")
    result[f"nDCG@{ndcg_k}"] = nanmean(per_query[f"nDCG@{ndcg_k}"])
    result["vote_top1"] = float(per_query["vote_correct"].mean()) if len(query_labels) else float("nan")
    result["queries"] = len(query_labels)
    result["queries_without_relevant"] = int((~answerable).sum())
    result["per_query"] = per_query
    return result


def genus_ap(
    scores: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, genus_of: np.ndarray
) -> np.ndarray:
    """(Q,) average precision with any photo of the query's genus relevant (NaN: none in the gallery).

    ``genus_of`` maps a species index to its genus index; photos of species outside the evaluation
    (label -1) are never relevant.
    """
    gallery_labels = np.asarray(gallery_labels)
    genus_of = np.asarray(genus_of)
    gallery_genus = np.where(gallery_labels >= 0, genus_of[np.maximum(gallery_labels, 0)], -1)
    query_genus = genus_of[np.asarray(query_labels)]
    return np.array(
        [average_precision(row, gallery_genus == g) for row, g in zip(scores, query_genus, strict=True)]
    )


def class_mean_ap(scores: np.ndarray, positives: np.ndarray) -> tuple[float, np.ndarray]:
    """Class-wise mAP: for each class, AP of ranking the clips by that class's score.

    Args:
        scores: (Q, S) clip-class scores.
        positives: (Q, S) booleans, True where the clip holds the class.
    Returns:
        (mean over classes with at least one positive clip, (S,) per-class AP with NaN for the rest).
    """
    scores, positives = np.asarray(scores), np.asarray(positives, dtype=bool)
    per_class = np.array([average_precision(scores[:, s], positives[:, s]) for s in range(scores.shape[1])])
    return nanmean(per_class), per_class


def classification_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    """Single-label audio classification: top-1 accuracy (ties shared) and class-wise mAP."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    positives = np.zeros(scores.shape, dtype=bool)
    positives[np.arange(len(labels)), labels] = True
    cmap, per_class = class_mean_ap(scores, positives)
    top1 = [top1_correct(row, int(label)) for row, label in zip(scores, labels, strict=True)]
    return {"top1": nanmean(np.asarray(top1)), "cmAP": cmap, "per_class_AP": per_class}


def multilabel_metrics(scores: np.ndarray, positives: np.ndarray) -> dict[str, object]:
    """Soundscape segments with any number of species: cmAP, macro AUROC and top-1.

    Top-1 is over segments holding at least one species: the share whose highest-scoring class is
    present (ties shared). AUROC is macro-averaged over classes with both positive and negative segments.
    """
    scores, positives = np.asarray(scores), np.asarray(positives, dtype=bool)
    cmap, per_class = class_mean_ap(scores, positives)
    aurocs = np.array([auroc(scores[:, s], positives[:, s]) for s in range(scores.shape[1])])
    labelled = positives.any(axis=1)
    top1 = []
    for row, pos in zip(scores[labelled], positives[labelled], strict=True):
        best = row == row.max()
        top1.append((best & pos).sum() / best.sum())
    return {
        "cmAP": cmap,
        "AUROC": nanmean(aurocs),
        "top1": nanmean(np.asarray(top1)),
        "segments": int(len(scores)),
        "segments_with_species": int(labelled.sum()),
        "per_class_AP": per_class,
        "per_class_AUROC": aurocs,
    }


# ---- intervals --------------------------------------------------------------------------------------


def stratified_resample(strata: np.ndarray | list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Item indices drawn with replacement within each stratum, as many as the stratum holds.

    ``strata``: each item's stratum, or the item indices of each stratum (``strata_groups``).
    """
    groups = strata if isinstance(strata, list) else strata_groups(strata)
    parts = [group[rng.integers(0, len(group), size=len(group))] for group in groups]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def strata_groups(strata: np.ndarray) -> list[np.ndarray]:
    """The item indices of each stratum, strata in sorted order."""
    strata = np.asarray(strata)
    return [np.flatnonzero(strata == s) for s in np.unique(strata)]


def bootstrap_interval(
    statistic: Callable[[int, np.ndarray], float],
    runs: int,
    strata: np.ndarray,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    draws: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[float, float, float]:
    """Mean over training runs of a statistic, and a percentile bootstrap interval around it.

    Two levels, both drawn with replacement in each resample: the ``runs`` training runs (seeds),
    and the items (queries, segments) within each stratum (a query's species; a segment's
    recording), so every resample keeps each species' share of the queries. A resample's value is
    the mean, over its drawn runs, of ``statistic(run, item indices)``.

    The draws depend only on ``runs``, ``strata``, ``resamples`` and ``seed``: every method scored
    on the same items gets the same resamples, so the interval of a ``difference`` of two methods'
    statistics is a paired one. ``draws`` (``bootstrap_draws``) reuses them across calls.

    Args:
        statistic: (run index, item indices) -> the metric of that run on those items (may be NaN:
            a resample without any positive, say; such resamples are left out).
        runs: number of training runs.
        strata: (items,) stratum of each item.
    Returns:
        (mean over runs on all items, lower bound, upper bound).
    """
    if runs < 1:
        raise ValueError(f"need at least one run, got {runs}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    everything = np.arange(len(strata))
    point = nanmean(np.array([statistic(r, everything) for r in range(runs)]))
    values = bootstrap_replicates(statistic, runs, strata, resamples, seed, draws)
    values = values[np.isfinite(values)]
    if not values.size:
        return point, float("nan"), float("nan")
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return point, float(low), float(high)


def bootstrap_draws(
    runs: int, strata: np.ndarray, resamples: int, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(drawn runs, drawn items) of each resample: runs with replacement, items within their stratum."""
    codes = np.unique(np.asarray(strata), return_inverse=True)[1].ravel()
    return resample_draws(codes.astype(np.int64).tobytes(), runs, resamples, seed)


def bootstrap_replicates(
    statistic: Callable[[int, np.ndarray], float],
    runs: int,
    strata: np.ndarray,
    resamples: int,
    seed: int,
    draws: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
) -> np.ndarray:
    """(resamples,) values of the statistic, each on drawn runs and items within strata (see above)."""
    draws = draws if draws is not None else bootstrap_draws(runs, strata, resamples, seed)
    values = np.empty(len(draws))
    for b, (drawn_runs, items) in enumerate(draws):
        values[b] = nanmean(np.array([statistic(int(r), items) for r in drawn_runs]))
    return values


def difference(
    first: Callable[[int, np.ndarray], float], second: Callable[[int, np.ndarray], float]
) -> Callable[[int, np.ndarray], float]:
    """The statistic ``first - second`` on the same run and items: bootstrapped, a paired interval."""
    return lambda run, items: first(run, items) - second(run, items)


@functools.lru_cache(maxsize=16)
def resample_draws(
    codes: bytes, runs: int, resamples: int, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The (runs, items) of every resample, for strata given as the bytes of their int64 codes.

    The draws depend only on the strata and the seed, not on the statistic: an evaluation asks for
    the same ones for every method and metric (queries by species, segments by recording), and
    drawing them, not the statistic, was most of an interval's time. Read-only, as they are shared.
    """
    groups = strata_groups(np.frombuffer(codes, dtype=np.int64))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        drawn_runs = rng.integers(0, runs, size=runs)
        items = stratified_resample(groups, rng)
        drawn_runs.flags.writeable = items.flags.writeable = False
        draws.append((drawn_runs, items))
    return tuple(draws)


def query_mean(values: np.ndarray) -> Callable[[int, np.ndarray], float]:
    """The statistic of a query-averaged metric: (runs, queries) per-query values, NaN left out."""
    values = np.asarray(values, dtype=np.float64)
    return lambda run, items: nanmean(values[run, items])


def class_mean(values: np.ndarray, labels: np.ndarray) -> Callable[[int, np.ndarray], float]:
    """The statistic of a class-averaged metric: the mean over species of each species' query mean."""
    values = np.asarray(values, dtype=np.float64)
    codes = np.unique(np.asarray(labels), return_inverse=True)[1].ravel()
    size = int(codes.max()) + 1 if codes.size else 0

    def statistic(run: int, items: np.ndarray) -> float:
        chosen, species = values[run, items], codes[items]
        finite = np.isfinite(chosen)
        sums = np.bincount(species[finite], weights=chosen[finite], minlength=size)
        counts = np.bincount(species[finite], minlength=size)
        return nanmean(sums[counts > 0] / counts[counts > 0])

    return statistic


def cmap_of(scores: np.ndarray, positives: np.ndarray) -> Callable[[int, np.ndarray], float]:
    """The statistic of class-wise mAP over segments: (runs, segments, classes) scores, (segments, classes) labels."""
    scores, positives = np.asarray(scores), np.asarray(positives, dtype=bool)
    return lambda run, items: class_mean_ap(scores[run, items], positives[items])[0]
