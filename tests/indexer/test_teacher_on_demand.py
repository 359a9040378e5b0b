"""A reindex builds the teacher only when a photo or a species name needs it.

For BioCLIP-2 that is seconds and gigabytes saved on every scheduled reindex that finds nothing
new; the description the manifest records stands in for the model while its files are unchanged.
"""

import json
import shutil

import pytest

from birdsearch.indexer import pipeline
from birdsearch.indexer.pipeline import IndexConfig, run_index
from birdsearch.indexer.store import IndexRoot


def config(gallery, out, teacher):
    return IndexConfig(gallery=gallery, out=out, teacher=teacher, device="cpu", workers=0, progress=False)


@pytest.fixture
def model_builds(monkeypatch):
    """The teacher specs the pipeline builds a model for, in order."""
    built = []
    real = pipeline.ImageEmbedder

    def counting(spec, device="auto", teacher=None):
        built.append(spec)
        return real(spec, device, teacher)

    monkeypatch.setattr(pipeline, "ImageEmbedder", counting)
    return built


def test_a_reindex_builds_the_teacher_only_for_new_photos(
    tmp_path, tiny_teacher_spec, synthetic_photos, model_builds
):
    gallery, out = tmp_path / "gallery", tmp_path / "idx"
    synthetic_photos(gallery / "Turdus_migratorius", 3, seed=1)
    synthetic_photos(gallery / "Junco_hyemalis", 3, seed=2)
    run_index(config(gallery, out, tiny_teacher_spec))
    assert model_builds == [tiny_teacher_spec]
    described = IndexRoot(out).open_current().teacher

    unchanged = run_index(config(gallery, out, tiny_teacher_spec))
    assert not unchanged.published and unchanged.unchanged == 6
    (gallery / "Junco_hyemalis" / "img0000.jpg").unlink()
    removed = run_index(config(gallery, out, tiny_teacher_spec))
    assert removed.published and removed.removed == 1 and removed.embedded == 0
    assert model_builds == [tiny_teacher_spec]  # neither run built it
    assert IndexRoot(out).open_current().teacher == described

    synthetic_photos(gallery / "Junco_hyemalis", 1, seed=9)[0].rename(gallery / "Junco_hyemalis" / "new.jpg")
    added = run_index(config(gallery, out, tiny_teacher_spec))
    assert added.embedded == 1 and model_builds == [tiny_teacher_spec] * 2


def test_a_changed_teacher_config_builds_the_model_again(
    tmp_path, tiny_teacher_dir, synthetic_photos, model_builds
):
    teacher_dir = shutil.copytree(tiny_teacher_dir, tmp_path / "teacher")
    spec = f"local-dir:{teacher_dir}"
    gallery, out = tmp_path / "gallery", tmp_path / "idx"
    synthetic_photos(gallery / "Turdus_migratorius", 2, seed=1)
    run_index(config(gallery, out, spec))
    config_file = teacher_dir / "open_clip_config.json"
    config_file.write_text(
        json.dumps(json.loads(config_file.read_text()), indent=4)
    )  # same content, new bytes

    again = run_index(config(gallery, out, spec))
    # Built to read the description afresh; it equals the recorded one, so the vectors are reused.
    assert model_builds == [spec, spec]
    assert not again.published and again.embedded == 0
