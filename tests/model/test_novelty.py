"""Novelty signals against naive versions, the reference file, thresholds fitted on validation, open_set.json."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from birdsearch.errors import ConfigError
from birdsearch.model import novelty
from birdsearch.model.novelty import (
    Evidence,
    KnnNovelty,
    MahalanobisNovelty,
    MaxConfidenceNovelty,
    OpenSet,
    PromptNovelty,
    Reference,
    available_candidates,
    build_reference,
    fit_open_set,
    load_open_set,
    load_reference,
    make_signal,
    min_conf_for_precision,
    novelty_threshold,
    save_open_set,
    save_reference,
)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def reference() -> Reference:
    """Three species, each a tight cluster of 20 windows around its own direction in 8-d."""
    rng = np.random.default_rng(0)
    centres = unit(rng.standard_normal((3, 8)))
    labels = np.repeat(np.arange(3), 20)
    embeddings = unit(centres[labels] + 0.1 * rng.standard_normal((60, 8))).astype(np.float32)
    return Reference(embeddings, labels, ("Aus a", "Aus b", "Bus c"))


def test_knn_is_one_minus_the_mean_similarity_of_the_k_nearest(reference):
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((5, 8))
    got = KnnNovelty(reference, k=3)(Evidence(tower=queries))
    for query, value in zip(unit(queries), got, strict=True):
        similarities = sorted((float(query @ row) for row in reference.embeddings), reverse=True)
        assert value == pytest.approx(1 - np.mean(similarities[:3]), abs=1e-5)


def test_mahalanobis_is_the_smallest_distance_to_a_species_mean(reference):
    rng = np.random.default_rng(2)
    queries = unit(rng.standard_normal((4, 8)))
    got = MahalanobisNovelty(reference, shrinkage=0.2)(Evidence(tower=queries))
    x, labels = reference.embeddings.astype(np.float64), reference.labels
    means = np.stack([x[labels == c].mean(0) for c in range(3)])
    centred = x - means[labels]
    covariance = centred.T @ centred / (len(x) - 3)
    covariance = 0.8 * covariance + 0.2 * np.trace(covariance) / 8 * np.eye(8)
    precision = np.linalg.inv(covariance)
    naive = [min(float((q - m) @ precision @ (q - m)) for m in means) for q in queries]
    np.testing.assert_allclose(got, naive, rtol=1e-6)


def test_windows_near_the_reference_are_less_novel_than_far_ones(reference):
    near = reference.embeddings[:5] + 0.01
    far = -reference.embeddings[:5]
    for signal in (KnnNovelty(reference), MahalanobisNovelty(reference)):
        assert signal(Evidence(tower=near)).max() < signal(Evidence(tower=far)).min(), signal.name


def test_max_confidence_and_prompt_novelty():
    confidences = np.array([[0.9, 0.1], [0.2, 0.05], [0.0, 0.0]])
    np.testing.assert_allclose(MaxConfidenceNovelty()(Evidence(confidences=confidences)), [0.1, 0.8, 1.0])
    with pytest.raises(ConfigError, match="calibrated confidences"):
        MaxConfidenceNovelty()(Evidence(tower=np.zeros((3, 4))))
    prompts = np.array([[1.0, 0.0]])  # "a recording of rain"
    species = np.array([[0.0, 1.0], [0.0, -1.0]])
    signal = PromptNovelty(prompts, species, logit_scale=10.0)
    rain, bird = signal(Evidence(embeddings=np.array([[1.0, 0.0], [0.0, 1.0]])))
    assert rain == pytest.approx(np.exp(10) / (np.exp(10) + 2))
    assert bird == pytest.approx(np.exp(0) / (np.exp(0) + np.exp(10) + np.exp(-10)))


def test_make_signal_names_what_is_missing(reference):
    with pytest.raises(ConfigError, match="reference windows"):
        make_signal("knn")
    with pytest.raises(ConfigError, match="text tower"):
        make_signal("prompts", reference=reference)
    with pytest.raises(ConfigError, match="unknown novelty signal 'energy'"):
        make_signal("energy", reference=reference)
    assert make_signal("knn", {"k": 2}, reference).k == 2
    with pytest.raises(ConfigError, match="audio tower"):
        make_signal("knn", reference=reference)(Evidence(confidences=np.zeros((1, 3))))
    assert set(available_candidates(None, None)) == {"max_confidence"}
    assert {"knn:5", "mahalanobis", "max_confidence"} <= set(available_candidates(reference, None))


def test_build_reference_caps_each_species_and_decodes_only_what_it_keeps():
    loaded = []

    def clip(label: int, n: int):
        def load():
            loaded.append(label)
            return np.full((n, 4), float(label + 1))

        return label, load

    clips = [clip(0, 3), clip(1, 1), clip(0, 3), clip(0, 3), clip(1, 1)]
    embed = lambda batch: np.concatenate([batch, np.ones((len(batch), 1))], axis=1)  # noqa: E731
    built = build_reference(embed, clips, ["Aus a", "Aus b"], per_species=4, batch_size=3)
    assert sorted(built.labels.tolist()) == [0, 0, 0, 0, 1, 1]
    assert loaded == [0, 1, 0, 1], "the third clip of a full species is never decoded"
    assert built.embeddings.shape == (6, 5) and np.allclose(np.linalg.norm(built.embeddings, axis=1), 1)
    assert built.facts["windows_seen"] == 8


def test_reference_round_trips_and_a_damaged_or_missing_one_is_refused_with_a_warning(
    reference, tmp_path, caplog
):
    save_reference(reference, tmp_path)
    loaded = load_reference(tmp_path)
    assert loaded is not None and loaded.species == reference.species
    np.testing.assert_array_equal(loaded.labels, reference.labels)
    np.testing.assert_allclose(loaded.embeddings, reference.embeddings, atol=1e-3)  # float16 on disk
    weights = tmp_path / novelty.REFERENCE_FILE
    data = bytearray(weights.read_bytes())
    data[-2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert load_reference(tmp_path) is None
    assert "checksum" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert load_reference(tmp_path / "elsewhere") is None
    assert "no novelty reference" in caplog.text


def test_the_threshold_keeps_the_asked_share_of_known_windows():
    values = np.arange(100, dtype=float)
    threshold = novelty_threshold(values, 0.95)
    assert (values > threshold).mean() == pytest.approx(0.04, abs=0.011)
    assert OpenSet("knn", threshold).novel(np.array([threshold, threshold + 1])).tolist() == [False, True]
    with pytest.raises(ConfigError, match="between 0 and 1"):
        novelty_threshold(values, 1.0)


def test_min_conf_is_the_smallest_threshold_reaching_the_precision():
    rng = np.random.default_rng(3)
    confidence = rng.random(300).round(2)  # ties
    correct = rng.random(300) < confidence  # surer detections are more often right
    for target in (0.6, 0.8, 0.95):
        got = min_conf_for_precision(confidence, correct, target)

        def precision(t: float) -> float:
            return correct[confidence >= t].mean()

        candidates = [t for t in np.unique(confidence) if precision(t) >= target]
        assert got == (min(candidates) if candidates else None)
    assert min_conf_for_precision(np.array([0.5, 0.4]), np.array([False, False]), 0.5) is None


def test_open_set_file_round_trips_per_mode_and_refuses_bad_entries(tmp_path):
    path = tmp_path / novelty.OPEN_SET_FILE
    save_open_set(path, "distilled", OpenSet("knn", 0.25, {"k": 5}, 0.4, {"val_auroc": 0.9}))
    save_open_set(path, "cascade", OpenSet("max_confidence", 0.8))
    loaded = load_open_set(path)
    assert loaded["distilled"] == OpenSet("knn", 0.25, {"k": 5}, 0.4)
    assert loaded["distilled"].facts == {"val_auroc": 0.9} and loaded["cascade"].min_conf is None
    data = json.loads(path.read_text())
    data["modes"]["cascade"]["signal"] = "energy"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="unknown novelty signal 'energy'"):
        load_open_set(path)
    path.write_text("{}")
    with pytest.raises(ConfigError, match="not an open-set file"):
        load_open_set(path)


def test_the_open_set_file_follows_the_umask_so_that_the_service_user_can_read_it(tmp_path, umask):
    umask(0o022)
    path = tmp_path / novelty.OPEN_SET_FILE
    save_open_set(path, "distilled", OpenSet("knn", 0.25, {"k": 5}))
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == [novelty.OPEN_SET_FILE]  # no temporary file left


def test_the_gate_chooses_the_signal_that_tells_outside_windows_apart_on_validation(reference):
    """Outside windows lie away from every species' reference windows, yet some are confident.

    The reference signals separate them, the best confidence does not: the fit picks a reference
    signal, calls about 5 % of the in-gallery windows novel, and picks the smallest min_conf whose
    detections in the windows it lets through reach the asked precision.
    """
    rng = np.random.default_rng(4)
    inside = reference.embeddings[rng.integers(0, 60, 40)] + 0.05 * rng.standard_normal((40, 8))
    outside = unit(rng.standard_normal((30, 8)))
    tower = np.concatenate([inside, outside])
    labels = reference.labels[rng.integers(0, 60, 40)]
    groups = np.array(["in_gallery"] * 40 + ["non_bird"] * 30)
    present = [{int(c)} for c in labels] + [set()] * 30
    confidences = np.full((70, 3), 0.05)
    confidences[np.arange(40), labels] = rng.uniform(0.3, 0.9, 40)  # right, and sure
    confidences[40:, 0] = rng.uniform(0.3, 0.9, 30)  # outside windows as sure as inside ones
    evidence = Evidence(tower=tower, confidences=confidences)
    gate = fit_open_set(
        evidence, groups, present, available_candidates(reference, None), keep=0.95, precision=0.9
    )
    assert gate.signal in ("knn", "mahalanobis")
    assert gate.facts["validation_mean_auroc"][gate.facts["chosen"]] > 0.95
    assert gate.facts["validation_mean_auroc"]["max_confidence"] < 0.7
    assert gate.facts["validation_novel"]["in_gallery"] <= 0.05
    assert gate.min_conf is not None and gate.facts["validation_precision"] >= 0.9
    novel = make_signal(gate.signal, gate.params, reference)(evidence) > gate.threshold
    assert novel[40:].mean() > 0.9
