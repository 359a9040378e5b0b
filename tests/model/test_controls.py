"""The supervised controls: linear head and linear classifier on frozen student embeddings."""

import pytest
import torch
import torch.nn.functional as F

from birdsearch.model.evaluate import controls
from birdsearch.model.evaluate.baselines import student_methods
from birdsearch.model.evaluate.cli import DEFAULT_METHODS as CLI_DEFAULT_METHODS
from birdsearch.model.evaluate.run import DEFAULT_METHODS


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def clustered(species=4, per=12, dim=8, seed=0):
    """Unit features around one centre per species; the captions are unrelated to the centres."""
    centres = unit(species, dim, seed=seed)
    labels = torch.arange(species).repeat_interleave(per)
    x = F.normalize(centres[labels] + 0.35 * unit(len(labels), dim, seed=seed + 1), dim=-1)
    return x, labels


def features():
    train, train_y = clustered(seed=0)
    val, val_y = clustered(per=4, seed=0)
    val = F.normalize(val + 0.2 * unit(16, 8, seed=11), dim=-1)  # same centres, new noise
    return controls.FrozenFeatures(train, train_y, val, val_y, {"val_clips": len(val_y)})


def test_classifier_learns_the_species_its_captions_cannot_name():
    feats = features()
    captions = unit(4, 8, seed=99)  # zero-shot classifier: unrelated to the audio
    fitted = controls.fit_classifier(feats, captions, batch_size=8)
    assert fitted.weight.shape == (4, 8)
    assert fitted.chosen["val_cmAP"] > 0.95
    assert fitted.chosen["epochs"] % controls.CHECK_EVERY == 0
    assert len(fitted.chosen["grid"]) == len(controls.LEARNING_RATES) * (
        controls.MAX_EPOCHS // controls.CHECK_EVERY
    )
    assert fitted.chosen["val_cmAP"] == max(g["val_cmAP"] for g in fitted.chosen["grid"])


@pytest.mark.parametrize("objective", ["batch", "class"])
def test_head_maps_audio_next_to_its_species_teacher_text(objective):
    feats = features()
    teacher = unit(4, 6, seed=5)
    fitted = controls.fit_head(feats, unit(4, 8, seed=99), teacher, objective, batch_size=8)
    assert fitted.weight.shape == (6, 8) and fitted.chosen["objective"] == objective
    mapped = F.normalize(feats.val @ fitted.weight.T, dim=-1)
    assert ((mapped @ teacher.T).argmax(1) == feats.val_labels).float().mean() > 0.9


def test_controls_become_methods_and_need_their_fit():
    feats = features()
    teacher, captions = unit(4, 6, seed=5), unit(4, 8, seed=99)
    fitted = {"head": controls.fit_head(feats, captions, teacher, "class"),
              "classifier": controls.fit_classifier(feats, captions)}  # fmt: skip

    class Student:
        dim = 8

        def embed_windows(self, windows, batch_size=32):
            return torch.as_tensor(windows)

    methods = student_methods(Student(), captions, teacher, controls.CONTROL_METHODS, 0, fitted)
    queries = {m.name: m.embedder.embed_windows(feats.val) for m in methods}
    hard = queries["linear-cascade-hard"]
    assert all(any(torch.allclose(row, t) for t in teacher) for row in hard)  # a species' text embedding
    for q in queries.values():
        assert q.shape == (16, 6) and torch.allclose(q.norm(dim=-1), torch.ones(16), atol=1e-5)
    with pytest.raises(ValueError, match="fitted head"):
        student_methods(Student(), captions, teacher, ("linear-head",), 0, {})


def without_species(feats, species):
    """The features with one species' training windows taken away (its validation clips kept)."""
    keep = feats.train_labels != species
    return controls.FrozenFeatures(
        feats.train[keep], feats.train_labels[keep], feats.val, feats.val_labels, feats.facts
    )


def test_a_species_without_labelled_audio_is_not_trained_and_keeps_its_caption():
    feats = without_species(features(), 3)
    captions = unit(4, 8, seed=99)
    fitted = controls.fit_classifier(feats, captions, batch_size=8)
    assert fitted.has_audio.tolist() == [True, True, True, False]
    torch.testing.assert_close(fitted.weight[3], captions[3])  # nothing pushed it away
    assert not torch.allclose(fitted.weight[0], captions[0])  # the others learned
    assert (
        fitted.chosen["species_with_audio"] == 3 and fitted.chosen["val_cmAP"] > 0.95
    )  # scored on 3 species
    head = controls.fit_head(feats, captions, unit(4, 6, seed=5), "class", batch_size=8)
    assert head.has_audio.tolist() == [True, True, True, False] and head.weight.shape == (6, 8)


def test_the_linear_cascade_answers_zero_shot_for_species_without_audio_at_each_offset():
    feats = without_species(features(), 3)
    teacher = unit(4, 6, seed=5)
    captions = F.normalize(
        torch.cat([unit(3, 8, seed=99), feats.val[feats.val_labels == 3].mean(0, keepdim=True)]), dim=-1
    )
    fitted = {"classifier": controls.fit_classifier(feats, captions, batch_size=8)}

    class Student:
        dim = 8
        model = type("M", (), {"logit_scale_a": torch.tensor(100.0).log()})  # its own logit scale: 100

        def embed_windows(self, windows, batch_size=32):
            return torch.as_tensor(windows)

    offsets = (float("-inf"), 0.0, 1e6)
    methods = student_methods(Student(), captions, teacher, ("linear-cascade-hard",), 0, fitted, offsets)
    assert [m.name for m in methods] == [
        "linear-cascade-hard@-inf",
        "linear-cascade-hard@0",
        "linear-cascade-hard@1e+06",
    ]
    answers = [m.embedder.embed_windows(feats.val) for m in methods]
    said_unseen = [[bool(torch.allclose(row, teacher[3])) for row in a] for a in answers]
    assert not any(said_unseen[0])  # closed set: never the species without audio
    assert all(said_unseen[2])  # pushed up by a huge offset: always it
    unseen = (feats.val_labels == 3).tolist()
    assert (
        sum(s and u for s, u in zip(said_unseen[1], unseen, strict=True)) > sum(unseen) / 2
    )  # zero-shot finds it
    (single,) = student_methods(Student(), captions, teacher, ("linear-cascade-hard",), 0, fitted, (0.0,))
    assert single.name == "linear-cascade-hard"


def test_command_line_lists_the_same_default_methods():
    assert CLI_DEFAULT_METHODS == DEFAULT_METHODS
    assert set(controls.CONTROL_METHODS) <= set(DEFAULT_METHODS)
