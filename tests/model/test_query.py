"""The zero-shot cascade: student posterior over species weights the teacher's species embeddings."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from birdsearch.model.query import CascadeQuery
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
