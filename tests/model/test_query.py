"""The zero-shot cascade: student posterior over species weights the teacher's species embeddings."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from birdsearch.model.query import CascadeQuery, HybridQuery
from birdsearch.model.student import Student


@pytest.fixture(scope="module")
def student(tiny_student_dir):
    return Student.load(f"local-dir:{tiny_student_dir}", device="cpu")


@pytest.fixture(scope="module")
def windows():
    return (0.1 * np.random.default_rng(1).standard_normal((4, 480_000))).astype(np.float32)


def test_soft_cascade_is_the_posterior_weighted_teacher_embedding(student, windows):
    student_species = F.normalize(torch.randn(5, student.dim), dim=-1)
    teacher_species = F.normalize(torch.randn(5, 8), dim=-1)
    cascade = CascadeQuery(student, student_species, teacher_species, logit_scale=10.0)
    audio = student.embed_windows(windows)
    probs = torch.softmax(10.0 * audio @ student_species.T, dim=-1)
    torch.testing.assert_close(cascade.posterior(audio), probs)
    expected = F.normalize(probs @ teacher_species, dim=-1)
    torch.testing.assert_close(cascade.embed_windows(windows), expected, atol=1e-5, rtol=1e-5)


def test_hard_cascade_returns_the_top_species_teacher_embedding(student, windows):
    student_species = F.normalize(torch.randn(5, student.dim), dim=-1)
    teacher_species = F.normalize(torch.randn(5, 8), dim=-1)
    cascade = CascadeQuery(student, student_species, teacher_species, hard=True)
    top = (student.embed_windows(windows) @ student_species.T).argmax(dim=-1)
    torch.testing.assert_close(cascade.embed_windows(windows), teacher_species[top])
    assert cascade.dim == 8
    assert cascade.logit_scale == pytest.approx(float(student.model.logit_scale_a.exp()))


def test_species_lists_must_line_up(student):
    with pytest.raises(ValueError, match="3 student and 4 teacher"):
        CascadeQuery(student, torch.randn(3, student.dim), torch.randn(4, 8))


class Identity:
    """An embedder whose embedding is its input: the test chooses the audio."""

    def embed_windows(self, windows, batch_size=32):
        return torch.as_tensor(windows, dtype=torch.float32)


def test_hybrid_takes_each_species_logit_from_the_scorer_that_may_speak_for_it():
    teacher = F.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    classifier_rows, zero_shot_rows = torch.eye(3), torch.eye(3).flip(0)
    labelled = CascadeQuery(Identity(), classifier_rows, teacher, logit_scale=10.0)
    fallback = CascadeQuery(Identity(), zero_shot_rows, teacher, logit_scale=5.0)
    has_audio = torch.tensor([True, True, False])
    audio = F.normalize(torch.tensor([[1.0, 0.2, 0.0], [0.0, 0.3, 1.0], [1.0, 0.0, 0.9]]), dim=-1)
    hybrid = HybridQuery(labelled, fallback, has_audio, offset=1.5)
    expected = torch.cat([10.0 * audio[:, :2], 5.0 * audio[:, :1] + 1.5], dim=1)  # species 2: zero-shot row 0
    torch.testing.assert_close(hybrid.logits(audio), expected)
    torch.testing.assert_close(
        hybrid.embed_windows(audio), F.normalize(torch.softmax(expected, -1) @ teacher, dim=-1)
    )
    closed = HybridQuery(labelled, fallback, has_audio, offset=float("-inf"), hard=True)
    assert (closed.logits(audio).argmax(-1) != 2).all()  # the closed set never answers species 2
    every = HybridQuery(labelled, fallback, torch.ones(3, dtype=torch.bool), offset=100.0)
    torch.testing.assert_close(every.embed_windows(audio), labelled.embed_windows(audio))
    with pytest.raises(ValueError, match="2 species flags"):
        HybridQuery(labelled, fallback, torch.ones(2, dtype=torch.bool))
