"""The world on disk: manifests others read, determinism, the cache."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import pytest
import soundfile as sf
from PIL import Image

from birdsearch.errors import ConfigError
from birdsearch.model.audio import load
from birdsearch.toy.config import tiny_config
from birdsearch.toy.world import DATA_STAGES, ensure_world, open_world


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_taxa_csv_round_trips_to_taxa(tiny_world):
    assert [t.scientific for t in tiny_world.taxa] == [sp.scientific for sp in tiny_world.species]
    assert [t.common for t in tiny_world.taxa] == [sp.common for sp in tiny_world.species]
    header = rows(tiny_world.taxa_csv)[0].keys()
    assert {"scientific_name", "common_name", "genus", "family", "order"} <= set(header)


def test_gallery_is_a_folder_tree_and_a_manifest(tiny_world):
    manifest = rows(tiny_world.gallery_manifest)
    assert set(manifest[0]) == {
        "path", "species", "common_name", "genus", "family", "order", "license", "attribution", "source",
    }  # fmt: skip
    assert len(manifest) == tiny_world.config.gallery_images * len(tiny_world.species)
    folders = {p.name for p in tiny_world.gallery_dir.iterdir()}
    assert folders == {sp.slug for sp in tiny_world.species}
    for row in manifest:
        path = Path(row["path"])
        assert path.is_absolute() and path.parent.parent == tiny_world.gallery_dir
        assert path.parent.name.replace("_", " ") == row["species"]
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.size == (128, 128)
    teacher_photos = {r["path"] for r in rows(tiny_world.teacher_images_manifest)}
    assert teacher_photos and not teacher_photos & {r["path"] for r in manifest}


def test_recordings_exercise_the_front_end(tiny_world):
    names = {t.scientific for t in tiny_world.taxa}
    distill = rows(tiny_world.distill_manifest)
    assert list(distill[0]) == ["path", "species", "split", "start", "end"]
    assert {r["split"] for r in distill} == {"train", "val"}
    assert any(r["start"] for r in distill), "long recordings are given as (start, end) segments"
    query, student = rows(tiny_world.query_manifest), rows(tiny_world.student_manifest)
    all_paths = [r["path"] for r in distill + query + student]
    assert {r["species"] for r in distill + query + student} == names
    assert not {r["path"] for r in query} & ({r["path"] for r in distill} | {r["path"] for r in student})
    infos = [sf.info(p) for p in set(all_paths)]
    assert {i.samplerate for i in infos} >= {48_000, 22_050, 44_100} or len(infos) < 20
    assert {i.channels for i in infos} == {1, 2}
    assert {Path(p).suffix for p in all_paths} == {".ogg", ".mp3", ".flac", ".wav"}
    durations = [i.duration for i in infos]
    assert min(durations) < 10 < max(durations)
    for row in distill:
        if row["start"]:
            assert 0 <= float(row["start"]) < float(row["end"]) <= sf.info(row["path"]).duration + 0.01
    recording = load(query[0]["path"])  # the project's loader reads them
    assert recording.sample_rate == 48_000 and recording.samples.ndim == 1


def test_soundscapes_are_annotated(tiny_world):
    annotations = rows(tiny_world.soundscape_annotations)
    assert list(annotations[0]) == ["file", "start_s", "end_s", "species"]
    names = {t.scientific for t in tiny_world.taxa}
    for row in annotations:
        info = sf.info(row["file"])
        assert info.samplerate == 32_000 and 30 <= info.duration <= 31
        assert 0 <= float(row["start_s"]) < float(row["end_s"]) <= info.duration
        assert row["species"] in names
    assert len({r["species"] for r in annotations}) >= 3


MODEL_OUTPUTS = ("models", "demo")  # what other tests may have trained in the shared world meanwhile
ON_DEMAND = ("open-",)  # stages outside DATA_STAGES that other tests may have drawn in the shared world meanwhile


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every data file under a world root, by relative path, with the root's own name removed."""
    out = {}
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if parts[0] in MODEL_OUTPUTS or parts[0].startswith(("metrics", *ON_DEMAND)):
            continue
        if path.is_file() and ".stages" not in path.parts:
            out[str(path.relative_to(root))] = path.read_bytes().replace(str(root).encode(), b"<root>")
    return out


def test_same_seed_same_bytes_other_seed_other_world(tiny_world, tmp_path, monkeypatch):
    monkeypatch.setenv("BIRDSEARCH_CACHE", str(tmp_path))
    again = ensure_world(tiny_config(), stages=DATA_STAGES, progress=False)
    assert again.root != tiny_world.root
    first, second = tree_bytes(tiny_world.root), tree_bytes(again.root)
    assert first.keys() == second.keys() and len(first) > 40
    assert [name for name in first if first[name] != second[name]] == ["world.json"] or first == second
    other = ensure_world(tiny_config(seed=1), stages=("taxonomy",), progress=False)
    assert other.root != again.root
    assert other.taxa_csv.read_bytes() != again.taxa_csv.read_bytes()


def test_cache_is_reused_and_rebuilt_on_request(tiny_world):
    photo = Path(rows(tiny_world.gallery_manifest)[0]["path"])
    before = photo.stat().st_mtime_ns
    started = time.perf_counter()
    again = ensure_world(tiny_config(), stages=DATA_STAGES, progress=False)
    assert time.perf_counter() - started < 1.0
    assert again.root == tiny_world.root and photo.stat().st_mtime_ns == before
    os.utime(photo, ns=(before - 10**9, before - 10**9))
    rebuilt = ensure_world(tiny_config(), rebuild=True, stages=("gallery",), progress=False)
    assert photo.stat().st_mtime_ns > before - 10**9  # written again
    assert rebuilt.is_built("gallery") and not rebuilt.is_built("audio")
    ensure_world(tiny_config(), stages=DATA_STAGES, progress=False)  # leave it whole for others


def test_a_half_built_stage_is_built_again(tiny_world):
    marker = tiny_world.stage_marker("taxonomy")
    marker.unlink()
    tiny_world.taxa_csv.write_text("garbage")
    ensure_world(tiny_config(), stages=("taxonomy",), progress=False)
    assert marker.is_file() and tiny_world.taxa_csv.read_text().startswith("label,")


def test_unknown_stages_and_presets_are_refused(toy_cache):
    with pytest.raises(ConfigError, match="stages"):
        ensure_world(tiny_config(), stages=("everything",))
    with pytest.raises(ConfigError, match="unknown toy world"):
        open_world("huge")
    with pytest.raises(ConfigError, match="variant"):
        open_world().student_dir_for("clever")


def test_preset_worlds_are_named_by_specs(toy_cache):
    default, small = open_world(), open_world("small")
    assert (default.teacher_spec, default.student_spec, default.perfect_student_spec) == (
        "toy",
        "toy",
        "toy:perfect",
    )
    assert (small.teacher_spec, small.student_spec, small.perfect_student_spec) == (
        "toy:small",
        "toy:small",
        "toy:small-perfect",
    )
    assert open_world("tiny").teacher_spec == "toy:tiny"
    custom = open_world(tiny_config(seed=5))
    assert custom.teacher_spec == f"local-dir:{custom.teacher_dir}"
    assert custom.root.name.startswith("custom-") and default.root != small.root
