"""The distilled-encoder checkpoint: built from a student, saved atomically, loaded without teacher or student."""

import json

import numpy as np
import pytest
import torch

from birdsearch.errors import CheckpointError
from birdsearch.model.encoder import (
    CARD_FILE,
    WEIGHTS_FILE,
    DistilledAudioEncoder,
    EncoderCard,
    load_encoder,
    save_encoder,
)
from birdsearch.model.student import Student


@pytest.fixture(scope="module")
def student(tiny_student_dir):
    return Student.load(f"local-dir:{tiny_student_dir}", device="cpu")


def card_for(student: Student, out_dim: int = 24) -> EncoderCard:
    return EncoderCard(
        base_student=student.id,
        audio_config=student.model.config.audio_config.to_dict(),
        projection_dim=student.dim,
        teacher={"id": "local-dir:/teacher", "dim": out_dim, "weights_sha256": "0" * 64},
        text_format="taxon_com",
        templates="openai",
        front_end=student.front_end_config.to_dict(),
        training_data_hash="abc",
        metrics={"val_top1": 0.5},
    )


@pytest.fixture
def windows():
    rng = np.random.default_rng(0)
    return (0.1 * rng.standard_normal((3, 480_000))).astype(np.float32)


def test_a_new_encoder_starts_from_the_students_audio_tower(student, windows):
    encoder = DistilledAudioEncoder.from_student(student.model, out_dim=24).eval()
    features = student.mel(windows)
    with torch.no_grad():
        student_out = student.model.audio_projection(
            student.model.audio_model(input_features=features).pooler_output
        )
        ours = encoder.audio_projection(encoder.audio_model(input_features=features).pooler_output)
    torch.testing.assert_close(ours, student_out)
    assert encoder(features).shape == (3, 24)


def test_save_and_load_round_trip(student, windows, tmp_path):
    encoder = DistilledAudioEncoder.from_student(student.model, out_dim=24)
    torch.nn.init.normal_(encoder.head.weight)
    path = save_encoder(encoder, card_for(student), tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == [CARD_FILE, WEIGHTS_FILE]
    loaded = load_encoder(path, device="cpu")
    assert loaded.dim == 24 and loaded.card.metrics == {"val_top1": 0.5} and loaded.card.created
    expected = encoder.eval()(student.mel(windows)).detach()
    embedded = loaded.embed_windows(windows)
    torch.testing.assert_close(embedded, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(embedded.norm(dim=-1), torch.ones(3))


def test_saving_over_an_existing_checkpoint_replaces_it_whole(student, tmp_path):
    encoder = DistilledAudioEncoder.from_student(student.model, out_dim=24)
    first = card_for(student)
    save_encoder(encoder, first, tmp_path / "ckpt")
    second = card_for(student)
    second.metrics = {"val_top1": 0.9}
    save_encoder(encoder, second, tmp_path / "ckpt")
    assert load_encoder(tmp_path / "ckpt", "cpu").card.metrics == {"val_top1": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary or old copies left


def test_load_errors_name_the_problem(student, tmp_path):
    with pytest.raises(CheckpointError, match="card.json is missing"):
        load_encoder(tmp_path, "cpu")
    path = save_encoder(
        DistilledAudioEncoder.from_student(student.model, 24), card_for(student), tmp_path / "c"
    )
    card = json.loads((path / CARD_FILE).read_text())
    (path / CARD_FILE).write_text(json.dumps({**card, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_encoder(path, "cpu")
    (path / CARD_FILE).write_text(json.dumps({**card, "teacher": {**card["teacher"], "dim": 16}}))
    with pytest.raises(CheckpointError, match="weights do not match the card"):
        load_encoder(path, "cpu")
    (path / CARD_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_encoder(path, "cpu")
