"""Loading refuses a partial model: a checkpoint whose keys do not match stops with the keys named.

The tiny stand-ins are saved in the publishers' formats (open_clip's ``open_clip_model.safetensors``,
transformers' ``model.safetensors``), then one key is renamed, as a checkpoint saved by another
library version can have it.
"""

import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from birdsearch.errors import CheckpointError, IncompleteCheckpointError
from birdsearch.model.student import Student
from birdsearch.model.teacher import Teacher


def edit_weights(source, directory, weights_name, edit):
    """A copy of the model directory ``source`` whose weights file went through ``edit(state) -> state``."""
    shutil.copytree(source, directory)
    state = load_file(directory / weights_name)
    save_file(edit(state), directory / weights_name, metadata={"format": "pt"})
    return directory


def rename(old, new):
    def edit(state):
        state[new] = state.pop(old)
        return state

    return edit


def drop(*keys):
    def edit(state):
        return {k: v for k, v in state.items() if k not in keys}

    return edit


def test_a_normal_teacher_loads_silently_with_every_weight(tiny_teacher_dir, caplog, capfd):
    with caplog.at_level(logging.WARNING):
        teacher = Teacher.load(f"local-dir:{tiny_teacher_dir}", device="cpu")
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    saved = load_file(tiny_teacher_dir / "open_clip_model.safetensors")
    loaded = teacher.model.state_dict()
    assert set(saved) == set(loaded)
    for key, value in saved.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_a_teacher_with_a_renamed_key_is_refused_naming_it(tiny_teacher_dir, tmp_path):
    old, new = "visual.proj", "visual.projection"
    broken = edit_weights(tiny_teacher_dir, tmp_path / "t", "open_clip_model.safetensors", rename(old, new))
    with pytest.raises(IncompleteCheckpointError) as caught:
        Teacher.load(f"local-dir:{broken}", device="cpu")
    assert caught.value.missing == [old] and caught.value.unexpected == [new]
    message = str(caught.value)
    assert "1 missing (visual.proj)" in message and "1 unexpected (visual.projection)" in message
    assert "open_clip_model.safetensors" in message and isinstance(caught.value, CheckpointError)


def test_a_normal_student_loads_silently(tiny_student_dir, caplog, capfd):
    with caplog.at_level(logging.WARNING):
        student = Student.load(f"local-dir:{tiny_student_dir}", device="cpu")
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert "LOAD REPORT" not in capfd.readouterr().err
    saved = load_file(tiny_student_dir / "model.safetensors")
    torch.testing.assert_close(
        student.model.state_dict()["audio_projection.linear1.weight"],
        saved["audio_projection.linear1.weight"],
    )


def test_a_student_with_a_renamed_key_is_refused_naming_it(tiny_student_dir, tmp_path):
    old, new = "audio_projection.linear1.weight", "audio_projection.linear_1.weight"
    broken = edit_weights(tiny_student_dir, tmp_path / "s", "model.safetensors", rename(old, new))
    with pytest.raises(
        IncompleteCheckpointError, match=r"1 missing \(audio_projection\.linear1\.weight\)"
    ) as caught:
        Student.load(f"local-dir:{broken}", device="cpu")
    assert caught.value.unexpected == [new]
    assert "model.safetensors" in str(caught.value)


def test_a_student_missing_learned_batch_norm_statistics_is_refused(tiny_student_dir, tmp_path):
    stats = (
        "audio_model.audio_encoder.batch_norm.running_mean",
        "audio_model.audio_encoder.batch_norm.running_var",
    )
    broken = edit_weights(tiny_student_dir, tmp_path / "s", "model.safetensors", drop(*stats))
    with pytest.raises(IncompleteCheckpointError) as caught:
        Student.load(f"local-dir:{broken}", device="cpu")
    assert caught.value.missing == sorted(stats) and not caught.value.unexpected


def test_a_student_without_the_buffers_its_config_derives_still_loads(tiny_student_dir, tmp_path):
    """Older and newer transformers versions save different derived buffers; they are rebuilt, not random."""

    def drop_derived(state):
        derived = ("position_ids", "token_type_ids", "relative_position_index", "num_batches_tracked")
        return {k: v for k, v in state.items() if not k.endswith(derived)}

    saved = load_file(tiny_student_dir / "model.safetensors")
    trimmed = edit_weights(tiny_student_dir, tmp_path / "s", "model.safetensors", drop_derived)
    assert len(load_file(trimmed / "model.safetensors")) < len(saved)
    loaded = Student.load(f"local-dir:{trimmed}", device="cpu").model.state_dict()
    for key in ("text_model.embeddings.position_ids", "text_model.embeddings.token_type_ids"):
        torch.testing.assert_close(loaded[key], saved[key], rtol=0, atol=0)
    index = "audio_model.audio_encoder.layers.0.blocks.0.attention.self.relative_position_index"
    torch.testing.assert_close(loaded[index], saved[index], rtol=0, atol=0)
