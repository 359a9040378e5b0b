"""The species rule in the answer: the server's setting, a request's own rule, and a bad rule's 422."""

from types import SimpleNamespace

import numpy as np
import pytest
from fastapi import UploadFile
from pydantic import ValidationError

from birdsearch.engine import answer, ranking
from birdsearch.engine.errors import BadParameterError
from birdsearch.engine.index_state import ServedIndex
from birdsearch.engine.recording import WindowPlan
from birdsearch.indexer.store import SpeciesRecord
from birdsearch.service.schemas import QueryForm
from birdsearch.service.settings import Settings

FEW, MANY = "Apus apus", "Passer domesticus"  # rows 0 and 1 (species sorted by name)


class ExactVersion:
    """The part of an IndexVersion the answer uses: exact inner-product search over fixed vectors."""

    name = "v-test"

    def __init__(self, vectors: np.ndarray, species: list[str]):
        self.vectors, self.labels = vectors, species
        self.count = len(vectors)

    def search(self, queries, k, ids=None):
        sims = queries @ self.vectors.T
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, order, axis=1).astype(np.float32), order.astype(np.int64)

    def images(self, ids):
        return [
            SimpleNamespace(
                id=int(i),
                content_hash=f"{int(i):016x}",
                species=self.labels[int(i)],
                common="",
                license="",
                attribution="",
                source="",
            )  # fmt: skip
            for i in ids
        ]


def unbalanced_index() -> tuple[ServedIndex, np.ndarray]:
    """1 photo of FEW close to the query (0.8); 10 of MANY, one closer (0.85) and nine far (<= 0.3)."""
    query = np.array([[1.0, 0.0, 0.0]], np.float32)
    sims = [0.80, 0.85, 0.30, 0.28, 0.26, 0.25, 0.24, 0.22, 0.21, 0.20, 0.19]
    vectors = np.array([[s, np.sqrt(1 - s * s), 0.0] for s in sims], np.float32)
    labels = [FEW] + [MANY] * 10
    version = ExactVersion(vectors, labels)
    species = [SpeciesRecord(FEW, image_count=1), SpeciesRecord(MANY, image_count=10)]
    image_species = np.array([0] + [1] * 10, np.int32)
    served = ServedIndex(version, species, {FEW: 0, MANY: 1}, image_species, None)
    return served, query


def ranked(form_rule: str | None = None, server_rule: str = ranking.DEFAULT_SPECIES_RULE):
    served, query = unbalanced_index()
    plan = WindowPlan([query], np.array([0.0]), 10.0, 10.0, False, 10.0)
    form = QueryForm(audio=UploadFile(file=None, filename="x.wav"), species_k=2, species_rule=form_rule)
    species, _, _, aggregation = answer.search_and_rank(served, query, plan, form, None, 200, server_rule)
    return [hit.species for hit in species], aggregation


def test_the_default_rule_is_not_swayed_by_a_species_many_photos():
    assert ranking.DEFAULT_SPECIES_RULE != "best"
    order, aggregation = ranked()
    assert order == [FEW, MANY]
    assert f"species rule {ranking.DEFAULT_SPECIES_RULE}" in aggregation.window_species_score


def test_the_best_photo_rule_stays_selectable_by_setting_and_by_request():
    assert ranked(server_rule="best")[0] == [MANY, FEW]  # one lucky photo among ten wins
    assert ranked(form_rule="best")[0] == [MANY, FEW]
    assert ranked(form_rule="mean-top:3", server_rule="best")[0] == [FEW, MANY]  # the request's rule wins


def test_a_bad_request_rule_is_a_422_naming_the_rules():
    with pytest.raises(BadParameterError, match="species_rule: unknown species rule 'median'.*mean-top"):
        ranked(form_rule="median")


def test_the_setting_reads_the_environment_and_refuses_a_bad_rule(monkeypatch):
    monkeypatch.setenv("BIRDSEARCH_SPECIES_RULE", "best")
    assert Settings().species_rule == "best"
    monkeypatch.setenv("BIRDSEARCH_SPECIES_RULE", "kth:2")
    with pytest.raises(ValidationError, match="must be in"):
        Settings()
