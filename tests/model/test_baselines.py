"""The text-space maps and the baseline QueryEmbedders."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from birdsearch.model.distill.targets import random_rotation
from birdsearch.model.evaluate.baselines import (
    MappedQuery,
    RandomQuery,
    SharedStudent,
    encoder_methods,
    student_methods,
)
from birdsearch.model.query import CascadeQuery
from birdsearch.model.text_maps import fit_map, fit_procrustes, fit_ridge

sys.path.insert(0, str(Path(__file__).parent))
import conftest_distill as helpers  # noqa: E402


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_procrustes_recovers_a_rotation_and_is_orthogonal():
    source = unit(40, 16)
    rotation = random_rotation(16, seed=3)
    w = fit_procrustes(source, source @ rotation)
    torch.testing.assert_close(w, rotation.T, atol=1e-4, rtol=1e-4)
    wide = fit_procrustes(unit(10, 8), unit(10, 12, seed=1))  # 8 -> 12: orthonormal columns
    torch.testing.assert_close(wide.T @ wide, torch.eye(8), atol=1e-5, rtol=1e-5)


def test_procrustes_with_fewer_pairs_than_dimensions_is_one_map_whatever_the_rounding():
    """The pairs determine the map only on their span: the rest goes to zero, not to whatever basis the
    SVD's rounding picks (which changed the map by 0.67 for this perturbation, and from CPU to CPU)."""
    source, target = unit(6, 16), unit(6, 24, seed=1)
    nudged = source * (1 + 1e-6 * unit(6, 16, seed=5))  # below what float32 sums on other vector units move
    w = fit_procrustes(source, target)
    torch.testing.assert_close(fit_procrustes(nudged, target), w, atol=1e-5, rtol=0)
    span = torch.linalg.pinv(source.double()) @ source.double()  # projector onto the pairs' span
    torch.testing.assert_close(w.T.double() @ w.double(), span, atol=1e-5, rtol=0)


def test_ridge_primal_and_dual_agree_and_solve_least_squares():
    s, t = unit(6, 10), unit(6, 5, seed=1)  # fewer pairs than dimensions: the dual form
    dual = fit_ridge(s, t, alpha=0.5)
    primal = torch.linalg.solve(
        s.T.double() @ s.double() + 0.5 * torch.eye(10, dtype=torch.float64), s.T.double() @ t.double()
    ).T
    torch.testing.assert_close(dual, primal.float(), atol=1e-5, rtol=1e-5)
    exact = fit_ridge(unit(50, 4), unit(50, 4) @ torch.eye(4) * 2, alpha=1e-9)
    torch.testing.assert_close(exact, 2 * torch.eye(4), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["ridge", "procrustes", "mlp"])
def test_every_map_sends_each_caption_nearest_its_own_target(kind):
    source, target = unit(12, 16), unit(12, 24, seed=1)
    mapped = fit_map(kind, source, target, alpha=1e-3)(source)
    assert torch.allclose(mapped.norm(dim=-1), torch.ones(12), atol=1e-5)
    if kind != "procrustes":  # a rotation cannot fit 12 arbitrary pairs; the others can
        assert ((mapped @ target.T).argmax(1) == torch.arange(12)).all()


def test_random_query_is_unit_and_independent_of_audio():
    random = RandomQuery(8, seed=1)
    a = random.embed_windows(torch.zeros(5, 10))
    assert a.shape == (5, 8) and torch.allclose(a.norm(dim=-1), torch.ones(5))
    assert not torch.equal(a, random.embed_windows(torch.zeros(5, 10)))


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    from birdsearch.model.student import Student

    path = helpers.save_tiny_student(tmp_path_factory.mktemp("student"))
    return Student.load(f"local-dir:{path}", "cpu")


def test_shared_student_runs_the_tower_once_per_windows_object(student, monkeypatch):
    shared = SharedStudent(student)
    calls = []
    original = student.embed_windows
    monkeypatch.setattr(student, "embed_windows", lambda w, b=32: calls.append(1) or original(w, b))
    windows = torch.randn(3, helpers.SAMPLE_RATE * helpers.WINDOW_S) * 0.1
    first = shared.embed_windows(windows)
    assert shared.embed_windows(windows) is first and len(calls) == 1
    shared.embed_windows(windows.clone())
    assert len(calls) == 2
    assert shared.dim == student.dim  # everything else is the student's


def test_methods_share_the_student_and_match_the_plain_cascade(student):
    windows = torch.randn(4, helpers.SAMPLE_RATE * helpers.WINDOW_S) * 0.1
    student_species = student.embed_species(helpers.TAXA)
    teacher_species = unit(4, 32, seed=2)
    methods = {m.name: m for m in student_methods(student, student_species, teacher_species,
                                                   ("random", "cascade-soft", "cascade-hard", "map-procrustes"))}  # fmt: skip
    plain = CascadeQuery(student, student_species, teacher_species, hard=False).embed_windows(windows)
    torch.testing.assert_close(methods["cascade-soft"].embedder.embed_windows(windows), plain)
    hard = methods["cascade-hard"].embedder.embed_windows(windows)
    assert all(any(torch.allclose(row, t) for t in teacher_species) for row in hard)  # one species' vector
    mapped = methods["map-procrustes"].embedder
    assert isinstance(mapped, MappedQuery)
    expected = fit_map("procrustes", student_species, teacher_species)(student.embed_windows(windows))
    torch.testing.assert_close(mapped.embed_windows(windows), expected)


class FakeEncoder:
    """An embedder with a card, as ``load_encoder`` returns, that emits given vectors."""

    def __init__(self, vectors, target="teacher", temperature=0.05):
        self.vectors = vectors
        self.card = SimpleNamespace(
            teacher={"id": "t", "weights_sha256": "abc"},
            training={"target": target, "objective": "batch", "final_temperature": temperature},
        )

    def embed_windows(self, windows, batch_size=32):
        return self.vectors[: len(windows)]


def test_a_distilled_encoder_and_its_snapped_variants():
    teacher_species = unit(5, 8, seed=4)
    audio = F.normalize(teacher_species[[2, 0, 4]] + 0.3 * unit(3, 8, seed=5), dim=-1)  # near species 2, 0, 4
    methods = encoder_methods("d", FakeEncoder(audio), unit(5, 6), teacher_species, "t", "abc")
    assert [m.name for m in methods] == ["d", "d+snap-hard", "d+snap-soft"]
    assert "MISMATCH" not in methods[0].description
    windows = torch.zeros(3, 10)
    torch.testing.assert_close(methods[0].embedder.embed_windows(windows), audio)
    torch.testing.assert_close(methods[1].embedder.embed_windows(windows), teacher_species[[2, 0, 4]])
    soft = methods[2].embedder.embed_windows(windows)
    assert ((soft @ teacher_species.T).argmax(1) == torch.tensor([2, 0, 4])).all()
    mismatch = encoder_methods("d", FakeEncoder(audio), unit(5, 6), teacher_species, "t", "other", snap=False)
    assert len(mismatch) == 1 and "MISMATCH" in mismatch[0].description
    ablation = encoder_methods(
        "a", FakeEncoder(audio[:, :6], target="student-text"), unit(5, 6), teacher_species, "t"
    )
    assert len(ablation) == 1 and isinstance(ablation[0].embedder, MappedQuery)
