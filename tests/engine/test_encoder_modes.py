"""An encoder with its species classifier: the modes classifier and hybrid through every door.

The HTTP API (``mode``, ``/version``), the Python API (``query``, ``analyze``), the bulk engine
(``Detector``, what ``analyze`` runs) and the recorded default (``mode=auto``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from birdsearch.indexer.store import IndexRoot
from birdsearch.model import audio

CLIP = "perch_21100_36_48_16k_10s.flac"
WHY = "classifier: the highest validation mAP, 50.0 (against distilled 40.0, hybrid 50.0)"


@pytest.fixture(scope="module")
def classifier_encoder(tiny_models, index_root, tmp_path_factory) -> Path:
    """The tiny encoder with a species classifier over the index's species (half of them with labelled
    audio) and ``classifier`` recorded as its validation's choice."""
    from birdsearch.model.encoder import CARD_FILE, load_encoder, save_encoder
    from birdsearch.model.hub import resolve, weights_sha256
    from birdsearch.model.species_head import SpeciesHead

    loaded = load_encoder(tiny_models["encoder"], "cpu")
    names = [record.scientific for record in IndexRoot(index_root).open_current().species()]
    student = resolve(str(tiny_models["student"]), "student")
    rows = F.normalize(torch.randn(len(names), 32, generator=torch.Generator().manual_seed(3)), dim=-1)
    head = SpeciesHead(names, rows, 20.0, [i % 2 == 0 for i in range(len(names))],
                       {"id": student.spec, "weights_sha256": weights_sha256(student.weights_file)})  # fmt: skip
    loaded.card.metrics["modes"] = {"default": "classifier", "why": WHY, "chosen_on": "a test"}
    path = save_encoder(loaded.model, loaded.card, tmp_path_factory.mktemp("modes") / "encoder", head)
    assert json.loads((path / CARD_FILE).read_text())["metrics"]["modes"]["default"] == "classifier"
    return path


@pytest.fixture
def modes_app(settings_for, classifier_encoder, helpers):
    def make(**overrides):
        return helpers.running_app(settings_for(checkpoint=str(classifier_encoder), **overrides))

    return make


async def post(client, path, **form):
    return await client.post("/query", files={"audio": (path.name, path.read_bytes())}, data=form)


def test_the_http_api_serves_the_recorded_default_and_every_mode(modes_app, helpers):
    path = helpers.audio_file(CLIP)

    async def main():
        async with modes_app() as (_, client):
            version = (await client.get("/version")).json()
            ready = (await client.get("/readyz")).json()
            answers = {
                mode: await post(client, path, mode=mode, k="3") for mode in ("auto", "classifier", "hybrid")
            }
            return version, ready, answers

    version, ready, answers = helpers.run(main())
    assert version["default_mode"] == "classifier" and version["default_mode_reason"] == WHY
    assert set(version["modes"]) == {"distilled", "cascade", "classifier", "hybrid"} == set(ready["modes"])
    assert version["models"]["classifier"]["details"]["modes"]["default"] == "classifier"
    assert version["models"]["hybrid"]["dim"] == 32 + version["models"]["distilled"]["dim"]
    for mode, r in answers.items():
        assert r.status_code == 200, r.text
        assert r.json()["query"]["model"]["mode"] == ("classifier" if mode == "auto" else mode)


def test_the_classifier_answer_is_the_classifier_cascade_by_hand(modes_app, helpers, tiny_models, classifier_encoder,
                                                                 index_root):  # fmt: skip
    from birdsearch.model.encoder import load_encoder
    from birdsearch.model.species_head import mode_queries
    from birdsearch.model.student import PROMPT, Student

    path = helpers.audio_file(CLIP)

    async def main():
        async with modes_app() as (_, client):
            return {mode: (await post(client, path, mode=mode, k="4", species_rule="best")).json()
                    for mode in ("classifier", "hybrid")}  # fmt: skip

    body = helpers.run(main())
    version = IndexRoot(index_root).open_current()
    names, teacher_species = version.species_embeddings()
    common = {r.scientific: r.common for r in version.species()}
    student = Student.load(str(tiny_models["student"]), "cpu")
    encoder = load_encoder(classifier_encoder, "cpu")
    captions = student.embed_texts([PROMPT.format(common.get(n) or n) for n in names])
    queries = mode_queries(encoder.species_head, list(names), captions, torch.from_numpy(teacher_species),
                           float(student.model.logit_scale_a.exp()), 1 / 0.07, student=student, encoder=encoder)  # fmt: skip
    recording = audio.load(path)
    windows = audio.split(recording.samples, recording.sample_rate).samples
    for mode, query in queries.items():
        vectors = query.embed_windows(windows).numpy()
        scores, ids = version.search(vectors.astype(np.float32), 4)
        assert [h["id"] for h in body[mode]["images"]] == [int(i) for i in ids[0]], mode
        np.testing.assert_allclose([h["score"] for h in body[mode]["images"]], scores[0], atol=1e-5)


def test_the_python_api_and_the_bulk_engine_take_the_new_modes(settings_for, classifier_encoder, tiny_models,
                                                               index_root, helpers, tmp_path):  # fmt: skip
    from birdsearch.analyze.config import AnalyzeConfig
    from birdsearch.analyze.run import analyze
    from birdsearch.api import Birdsearch
    from birdsearch.engine.config import EngineConfig
    from birdsearch.engine.detector import Detector

    folder = tmp_path / "recordings"
    folder.mkdir()
    shutil.copy(helpers.audio_file(CLIP), folder / CLIP)
    with Birdsearch(index_root=index_root, checkpoint=str(classifier_encoder), student=str(tiny_models["student"]),
                    device="cpu", max_wait_ms=1.0) as bs:  # fmt: skip
        assert bs.query(folder / CLIP, mode="hybrid").query.model.mode == "hybrid"
        assert bs.query(folder / CLIP).query.model.mode == "classifier"  # the recorded default
        results = list(bs.analyze(folder, mode="classifier", min_conf=-1.0))
    assert len(results) == 1 and results[0].detections
    config = AnalyzeConfig(inputs=[str(folder)], out=tmp_path / "out", index_root=index_root, mode="hybrid",
                           checkpoint=str(classifier_encoder), student=str(tiny_models["student"]), device="cpu",
                           min_conf=-1.0, progress=False)  # fmt: skip
    analyze(config)
    assert json.loads((tmp_path / "out" / "run.json").read_text())["settings"]["mode"] == "hybrid"
    config = EngineConfig(index_root=index_root, checkpoint=str(classifier_encoder),
                          student=str(tiny_models["student"]), device="cpu")  # fmt: skip
    for mode, dim in (("classifier", 32), ("hybrid", 32 + 32)):  # the student's, then the encoder's
        detector = Detector.load(config, mode)
        assert detector.mode == mode
        outputs = detector.embedder(np.zeros((2, detector.front_end.window_samples), np.float32))
        vectors = detector.vectors(outputs)
        # each row: the mode's embedding, then the encoder's tower features (for the open-set gate)
        assert detector.embedder.facts.dim == dim
        assert outputs.shape[1] == dim + detector.embedder.tower_dim
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert Detector.load(config, "auto").mode == "classifier"


def test_a_classifier_fitted_on_another_students_audio_is_refused(classifier_encoder, tiny_models, tmp_path):
    from birdsearch.engine.embedders import DistilledEmbedder, StudentEmbedder, mode_embedder
    from birdsearch.errors import CheckpointError
    from birdsearch.model.species_head import FACTS_FILE

    other = tmp_path / "encoder"
    shutil.copytree(classifier_encoder, other)
    facts = json.loads((other / FACTS_FILE).read_text())
    facts["student"]["weights_sha256"] = "0" * 64
    (other / FACTS_FILE).write_text(json.dumps(facts))
    distilled = DistilledEmbedder.load(str(other), "cpu")
    student = StudentEmbedder.load(str(tiny_models["student"]), "cpu")
    with pytest.raises(CheckpointError, match="BIRDSEARCH_STUDENT"):
        mode_embedder("classifier", distilled, student)


def test_the_subcommands_offer_the_engines_modes_and_find_their_calibrations_beside_the_encoder(
    classifier_encoder, tmp_path
):
    from birdsearch.cli_args import QUERY_MODES
    from birdsearch.engine.confidence import calibration_for
    from birdsearch.engine.config import MODES
    from birdsearch.model.calibration import FILE_NAME, Platt, save_calibration

    assert QUERY_MODES == MODES
    encoder = tmp_path / "encoder"
    shutil.copytree(classifier_encoder, encoder)
    for mode in ("classifier", "hybrid"):
        save_calibration(encoder / FILE_NAME, mode, Platt((4.0,), -2.0))
    assert calibration_for("hybrid", "", str(encoder), tmp_path) == Platt((4.0,), -2.0)
    assert calibration_for("classifier", "", str(encoder), tmp_path) is not None
    assert calibration_for("distilled", "", str(encoder), tmp_path) is None
