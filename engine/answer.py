"""Search the served index with a recording's window vectors and build the response's lists.

Runs on a worker thread (FAISS and SQLite work). Taxon filters are resolved here too: names are
matched case-insensitively against the served version's species table, and a name that is not in
it is a 422 that says where to look, not an empty answer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from birdsearch.engine import ranking
from birdsearch.engine.detections import as_timeline, window_detections
from birdsearch.engine.errors import BadParameterError
from birdsearch.engine.index_state import ServedIndex
from birdsearch.engine.recording import WindowPlan
from birdsearch.engine.schemas import Aggregation, ImageHit, Question, SpeciesHit, TimelineWindow
from birdsearch.engine.scoring import image_records, score_windows
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
    gate: Any = None,
    features: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[list[SpeciesHit], list[ImageHit], list[TimelineWindow], Aggregation]:
    """(W, D) query vectors to the species ranking, image hits, timeline and aggregation facts.

    ``species_rule`` (the server's setting) pools a species' photos; the question's own rule wins.
    ``calibration`` (a ``birdsearch.model.calibration.Platt``) adds each species' confidence.
    ``gate`` (the mode's ``birdsearch.engine.gate.Gate``) measures the windows' ``features`` (the model's
    embeddings and tower features, ``embedders.split_outputs``): a novel window abstains, and a species'
    confidence in the ranking is its best in the windows that are not novel.
    The timeline lists each window's detections (``detections.window_detections``).
    """
    rule = request_rule(question.species_rule or species_rule)
    embeddings, tower = features if features is not None else (None, None)
    scored = score_windows(served, vectors, allowed, candidates_per_window, rule, calibration, k=question.k,
                           gate=gate, embeddings=embeddings, tower=tower)  # fmt: skip
    scores, ids = scored.scores, scored.ids
    top_rows = ranking.top_species(scored.species.recording, question.species_k)
    images = ranking.best_images(scores, ids, question.k)
    species_images = [
        ranking.best_image_of_species(scores, ids, served.image_species, int(row)) for row in top_rows
    ]
    records = image_records(served, [hit.id for hit in images] + species_images)
    windows = window_detections(
        served, scored, plan.starts_s, plan.window_s, plan.duration_s, question.species_k
    )
    confidence = scored.confidence
    if confidence is not None and scored.novel is not None:  # novel windows name no species
        confidence = np.where(scored.novel[:, None], 0.0, confidence)
    return (
        species_hits(served, scored.species, top_rows, species_images, records, confidence),
        image_hits(images, records),
        as_timeline(windows, plan.starts_s, plan.window_s, plan.duration_s, calibration is not None, scored),
        Aggregation(
            **{**ranking.AGGREGATION, "window_species_score": ranking.describe(rule)},
            candidates_per_window=scored.candidates,
        ),
    )


def request_rule(text: str) -> ranking.SpeciesRule:
    """A species rule, or a 422 that lists the rules."""
    try:
        return ranking.parse_rule(text)
    except ConfigError as e:
        raise BadParameterError(f"species_rule: {e}") from e


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
