"""The toy models: loaded like the real ones, and good at their own tasks on held-out data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from birdsearch.errors import ConfigError
from birdsearch.model import hub
from birdsearch.model.mel import FrontEndConfig
from birdsearch.model.student import Student
from birdsearch.model.teacher import Teacher
from birdsearch.toy.metrics import gallery_embeddings, measure_student, measure_teacher, top1
from birdsearch.toy.models import parse_variant, toy_model_dir


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        (None, ("default", "realistic")),
        ("perfect", ("default", "perfect")),
        ("small", ("small", "realistic")),
        ("small-perfect", ("small", "perfect")),
        ("perfect-small", ("small", "perfect")),
        ("realistic", ("default", "realistic")),
    ],
)
def test_variants_name_a_world_and_a_text_side(variant, expected):
    assert parse_variant(variant) == expected


@pytest.mark.parametrize("spec", ["toy:huge", "toy:perfect-clever", "toy:"])
def test_unknown_variants_are_refused(spec, toy_cache):
    kind = "student"
    if spec == "toy:":  # an empty variant is the default world; it must not be refused here
        assert parse_variant("") == ("default", "realistic")
        return
    with pytest.raises(ConfigError, match="variant"):
        hub.resolve(spec, kind)


def test_unknown_kind_is_refused():
    with pytest.raises(ConfigError, match="kind"):
        toy_model_dir("vocoder", "small")


def test_specs_load_like_real_ones(small_world):
    teacher = Teacher.load("toy:small", device="cpu")
    assert teacher.id == "toy:small" and teacher.resolved.source == "toy"
    assert teacher.resolved.path == small_world.teacher_dir
    assert teacher.dim == small_world.config.teacher.embed_dim
    assert (small_world.teacher_dir / "open_clip_config.json").is_file()
    assert (small_world.teacher_dir / "open_clip_model.safetensors").is_file()
    student = Student.load("toy:small", device="cpu")
    assert student.resolved.path == small_world.student_dir
    assert student.front_end_config == FrontEndConfig()  # BioLingual's 48 kHz, 10 s, 64-mel front end
    assert student.dim == small_world.config.student.projection_dim
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"):
        assert (small_world.student_dir / name).is_file()
    perfect = Student.load("toy:small-perfect", device="cpu")
    assert perfect.resolved.path == small_world.perfect_student_dir
    # The two students hear alike (one audio tower) and differ in what they can name.
    window = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, (1, 480_000)).astype(np.float32))
    assert torch.allclose(student.embed_windows(window), perfect.embed_windows(window), atol=1e-5)
    captions = ["Sound of a bird", f"Sound of a {small_world.taxa[0].common}"]
    assert not torch.allclose(student.embed_texts(captions), perfect.embed_texts(captions))


def test_teacher_names_held_out_photos(small_world):
    metrics = measure_teacher(small_world)
    chance = metrics["chance"]
    assert metrics["zero_shot_top1_taxon_com"] >= max(0.6, 4 * chance), metrics
    assert metrics["zero_shot_top1_com"] >= 3 * chance, metrics
    # Text and image spaces are aligned: a photo is close to its own species' name, not to others.
    assert metrics["cosine_own_species"] > metrics["cosine_other_species"] + 0.3, metrics


def test_teacher_photos_retrieve_their_species_through_text(small_world):
    teacher = Teacher.load("toy:small", device="cpu")
    images, labels = gallery_embeddings(small_world, teacher)
    classes = teacher.embed_species(small_world.taxa)
    # Text -> image retrieval: each species' text ranks its own photos first more often than not.
    ranking = (classes @ images.T).argsort(dim=1, descending=True)
    per_species = len(labels) // len(classes)
    precision = (labels[ranking[:, :per_species]] == torch.arange(len(classes))[:, None]).float().mean()
    assert precision > 0.5, precision
    assert top1(images @ classes.T, labels) > 0.5


def test_students_name_held_out_recordings(small_world):
    perfect = measure_student(small_world, "perfect")
    realistic = measure_student(small_world, "realistic")
    chance = perfect["chance"]
    assert perfect["zero_shot_top1"] >= 3 * chance, perfect
    # The realistic text side is the weak one: worse overall, and worst on names it never heard.
    assert realistic["zero_shot_top1"] < perfect["zero_shot_top1"], (realistic, perfect)
    assert realistic["zero_shot_top1_uncaptioned"] < realistic["zero_shot_top1_captioned"], realistic
    assert realistic["zero_shot_top1_captioned"] >= 2 * chance, realistic


def test_metrics_are_recorded_with_the_world(small_world):
    metrics = json.loads(small_world.metrics_json.read_text())
    assert set(metrics) == {"teacher", "student_realistic", "student_perfect"}
    assert metrics == small_world.metrics
    named = small_world.captioned_species
    assert 0 < len(named) < len(small_world.taxa)


@pytest.mark.slow
def test_default_world_builds_and_its_models_are_good(toy_cache):
    """The full world (24 species): a few minutes on 2 cores; its recorded metrics must hold up."""
    from birdsearch.toy.world import ensure_world

    world = ensure_world("default", progress=False)
    metrics = world.metrics
    assert metrics["teacher"]["zero_shot_top1_taxon_com"] >= 0.75, metrics
    assert metrics["student_perfect"]["zero_shot_top1"] >= 0.6, metrics
    realistic = metrics["student_realistic"]
    assert realistic["zero_shot_top1"] < metrics["student_perfect"]["zero_shot_top1"] - 0.2, metrics
    assert realistic["zero_shot_top1_uncaptioned"] < 3 * realistic["chance"], metrics
