"""Search the served index with a recording's window vectors and build the response's lists.

Runs on a worker thread (FAISS and SQLite work). Taxon filters are resolved here too: names are
matched case-insensitively against the served version's species table, and a name that is not in
it is a 422 that says where to look, not an empty answer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from birdsearch.engine import ranking
from birdsearch.engine.errors import BadParameterError
from birdsearch.engine.index_state import ServedIndex
from birdsearch.engine.metrics import stage_timer
from birdsearch.engine.recording import WindowPlan
from birdsearch.engine.schemas import (
    Aggregation,
    ImageHit,
    Question,
    SpeciesHit,
    TimelineWindow,
    WindowSpecies,
)
from birdsearch.errors import ConfigError


def split_names(values: list[str]) -> list[str]:
    """Repeated fields and comma-separated lists, flattened."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def canonical(values: dict[str, str], wanted: str, what: str, index: str) -> str:
    """The index's spelling of ``wanted`` (case-insensitive), or a 422 naming it."""
    found = values.get(wanted.lower())
    if found is None:
        raise BadParameterError(f"{what} {wanted!r} is not in index {index}; GET /species lists what is")
    return found


def filter_ids(served: ServedIndex, question: Question) -> np.ndarray | None:
    """Image ids allowed by the question's taxon filters; None when there are none."""
    names = split_names(question.species)
    levels = {"genus": question.genus, "family": question.family, "order": question.order}
    if not names and not any(levels.values()):
        return None
    by_level: dict[str, dict[str, str]] = {"species": {}, "genus": {}, "family": {}, "order": {}}
    for record in served.species:
        by_level["species"][record.scientific.lower()] = record.scientific
        for level in ("genus", "family", "order"):
            value = getattr(record, level)
            if value:
                by_level[level][value.lower()] = value
    species = [canonical(by_level["species"], name, "species", served.name) for name in names] or None
    chosen = {
        level: canonical(by_level[level], value, level, served.name) if value else None
        for level, value in levels.items()
    }
    ids = served.version.ids_for(species=species, **chosen)
    if ids.size == 0:
        given = {"species": names, **{k: v for k, v in levels.items() if v}}
        raise BadParameterError(f"no image in index {served.name} matches the filters {given}")
    return ids


def image_urls(image_id: int, content_hash: str) -> tuple[str, str]:
    """Photo and thumbnail URLs; the content hash keeps them valid after a newer index renumbers ids."""
    return f"/images/{image_id}?h={content_hash}", f"/images/{image_id}/thumbnail?h={content_hash}"


def search_and_rank(
    served: ServedIndex,
    vectors: np.ndarray,
    plan: WindowPlan,
    question: Question,
    allowed: np.ndarray | None,
    candidates_per_window: int,
    species_rule: str = ranking.DEFAULT_SPECIES_RULE,
    calibration: Any = None,
) -> tuple[list[SpeciesHit], list[ImageHit], list[TimelineWindow], Aggregation]:
    """(W, D) query vectors to the species ranking, image hits, timeline and aggregation facts.

    ``species_rule`` (the server's setting) pools a species' photos; the question's own rule wins.
    ``calibration`` (a ``birdsearch.model.calibration.Platt``) adds each species' confidence.
    """
    rule = request_rule(question.species_rule or species_rule)
    scores, ids, candidates = search(served, vectors, question.k, allowed, candidates_per_window)
    species_scores = ranking.species_scores(scores, ids, served.image_species, len(served.species), rule)
    top_rows = ranking.top_species(species_scores.recording, question.species_k)
    confidence = calibration(species_scores.per_window) if calibration is not None else None
    images = ranking.best_images(scores, ids, question.k)
    species_images = [
        ranking.best_image_of_species(scores, ids, served.image_species, int(row)) for row in top_rows
    ]
    records = image_records(served, [hit.id for hit in images] + species_images)
    return (
        species_hits(served, species_scores, top_rows, species_images, records, confidence),
        image_hits(images, records),
        timeline(served, species_scores, plan, question.species_k, confidence, scores, ids),
        Aggregation(
            **{**ranking.AGGREGATION, "window_species_score": ranking.describe(rule)},
            candidates_per_window=candidates,
        ),
    )


def request_rule(text: str) -> ranking.SpeciesRule:
    """A species rule, or a 422 that lists the rules."""
    try:
        return ranking.parse_rule(text)
    except ConfigError as e:
        raise BadParameterError(f"species_rule: {e}") from e


def search(
    served: ServedIndex, vectors: np.ndarray, k: int, allowed: np.ndarray | None, candidates_per_window: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Each window's nearest images among those allowed: (scores (W, C), ids (W, C), C).

    C is enough candidates both to rank species (``candidates_per_window``) and to fill ``k`` photos,
    and never more than the images there are to search.
    """
    pool = len(allowed) if allowed is not None else served.version.count
    candidates = max(1, min(max(k, candidates_per_window), pool))
    with stage_timer("search"):
        scores, ids = served.version.search(vectors, candidates, ids=allowed)
    return scores, ids, candidates


def image_records(served: ServedIndex, image_ids: list[int]) -> dict[int, Any]:
    """The index's records of these images, by id (an empty index has none to read)."""
    records = served.version.images(image_ids) if served.version.count else []
    return {record.id: record for record in records}


def image_hits(images: list[ranking.ImageScore], records: dict[int, Any]) -> list[ImageHit]:
    """The best photos over all windows, as the answer lists them."""
    hits = []
    for hit in images:
        record = records[hit.id]
        url, thumb = image_urls(hit.id, record.content_hash)
        hits.append(
            ImageHit(
                id=hit.id, url=url, thumbnail_url=thumb, species=record.species, common_name=record.common,
                score=round(hit.score, 6), window=hit.window, license=record.license,
                attribution=record.attribution, source=record.source,
            )
        )  # fmt: skip
    return hits


def species_hits(
    served: ServedIndex,
    scores: ranking.SpeciesScores,
    top_rows: np.ndarray,
    species_images: list[int],
    records: dict[int, Any],
    confidence: np.ndarray | None = None,
) -> list[SpeciesHit]:
    """The recording's top species, each with its lineage, score, best photo and (W, S) ``confidence``'s best."""
    hits = []
    for row, image_id in zip(top_rows, species_images, strict=True):
        record = served.species[int(row)]
        hits.append(
            SpeciesHit(
                species=record.scientific, common_name=record.common, genus=record.genus,
                family=record.family, order=record.order, score=round(float(scores.recording[row]), 6),
                windows=int(scores.top_windows[row]), best_window=int(scores.best_window[row]),
                image_id=image_id, thumbnail_url=image_urls(image_id, records[image_id].content_hash)[1],
                confidence=None if confidence is None else round(float(confidence[:, row].max()), 4),
            )
        )  # fmt: skip
    return hits


def window_photo(served: ServedIndex, scores: np.ndarray, ids: np.ndarray, window: int, row: int) -> tuple[int, float]:
    """Species ``row``'s best photo among window ``window``'s candidates and its score ((-1, nan) when none)."""
    photo = ranking.best_image_of_species(scores[window : window + 1], ids[window : window + 1],
                                          served.image_species, row)  # fmt: skip
    if photo < 0:
        return photo, float("nan")
    return photo, float(scores[window][ids[window] == photo].max())


def timeline(
    served: ServedIndex, scores: ranking.SpeciesScores, plan: WindowPlan, species_k: int,
    confidence: np.ndarray | None = None, candidate_scores: np.ndarray | None = None,
    candidate_ids: np.ndarray | None = None,
) -> list[TimelineWindow]:
    """Each window's time span and its own top species, each with its best photo in that window when
    the candidates (``candidate_scores``, ``candidate_ids``: (W, C)) are given."""
    tops = [ranking.top_species(scores.per_window[w], species_k) for w in range(len(plan.starts_s))]
    photos: dict[tuple[int, int], tuple[int, float]] = {}
    if candidate_scores is not None and candidate_ids is not None:
        photos = {(w, int(row)): window_photo(served, candidate_scores, candidate_ids, w, int(row))
                  for w, rows in enumerate(tops) for row in rows}  # fmt: skip
    records = image_records(served, sorted({p for p, _ in photos.values() if p >= 0}))
    return [
        TimelineWindow(
            index=w,
            start_s=round(float(start), 3),
            end_s=round(min(float(start) + plan.window_s, plan.duration_s), 3),
            species=[window_species(served, scores, w, int(row), confidence, photos.get((w, int(row))), records)
                     for row in tops[w]],  # fmt: skip
        )
        for w, start in enumerate(plan.starts_s)
    ]


def window_species(
    served: ServedIndex, scores: ranking.SpeciesScores, w: int, row: int, confidence: np.ndarray | None,
    photo: tuple[int, float] | None, records: dict[int, Any],
) -> WindowSpecies:  # fmt: skip
    record = records.get(photo[0]) if photo is not None else None
    return WindowSpecies(
        species=served.species[row].scientific,
        common_name=served.species[row].common,
        score=round(float(scores.per_window[w, row]), 6),
        confidence=None if confidence is None else round(float(confidence[w, row]), 4),
        **({} if record is None else {
            "image_id": record.id, "image_score": round(photo[1], 6), "image_license": record.license,
            "image_attribution": record.attribution, "image_hash": record.content_hash,
        }),
    )  # fmt: skip
