"""Evaluation data loaders on generated fixtures in SSW60's released layout and BirdSet's soundscape layout."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from birdsearch.errors import ConfigError
from birdsearch.model.distill.manifest import load_manifest, load_species_table
from birdsearch.model.evaluate import datasets

sys.path.insert(0, str(Path(__file__).parent))
import conftest_distill as helpers  # noqa: E402


@pytest.fixture(scope="module")
def ssw60(tmp_path_factory):
    return helpers.write_ssw60(tmp_path_factory.mktemp("ssw60"), audio_per_species=3, images_per_species=2)


@pytest.fixture(scope="module")
def soundscapes(tmp_path_factory):
    return helpers.write_soundscapes(tmp_path_factory.mktemp("soundscapes"), recordings=2, seconds=22.0)


def test_ssw60_test_audio_are_the_queries(ssw60):
    queries = datasets.load_ssw60(ssw60, split="test")
    assert len(queries.taxa) == 4 and len(queries.clips) == 4  # one test clip per species
    assert queries.taxa[0].family == "Tonidae"  # "Tonidae (Tone birds)" without its gloss
    assert [c.species for c in queries.clips] == [0, 1, 2, 3]
    assert all(c.path.parent.name == "audio_ml" and c.path.suffix == ".wav" for c in queries.clips)
    assert len(datasets.load_ssw60(ssw60, split="train").clips) == 8


def test_ssw60_export_writes_manifests_the_other_commands_read(ssw60, tmp_path):
    paths = datasets.export_ssw60(ssw60, tmp_path / "manifests")
    table = load_species_table(paths["taxa"])
    assert [t.scientific for t in table.taxa] == [t.scientific for t in helpers.TAXA]
    train = load_manifest(paths["audio_train"], paths["taxa"], val_fraction=0.0)
    assert len(train.clips) == 8 and {c.split for c in train.clips} == {"train"}
    gallery = pd.read_csv(paths["gallery"])
    assert len(gallery) == 8  # the test photos of both sources: 1 per species each
    assert set(gallery["source"]) == {"ssw60/nabirds", "ssw60/inat"}
    assert gallery["attribution"].str.startswith("Person").all()
    assert all(Path(p).is_file() for p in gallery["path"])
    from birdsearch.indexer.gallery import read_gallery

    listed = read_gallery(paths["gallery"])  # the indexer's own reader accepts it
    assert len(listed.items) == 8 and not listed.skipped


def test_ssw60_layout_errors_name_the_fix(tmp_path, ssw60):
    with pytest.raises(ConfigError, match="not an SSW60 directory.*audio_ml.csv"):
        datasets.load_ssw60(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("taxa.csv", "audio_ml.csv"):
        (broken / name).write_text((ssw60 / name).read_text())
    (broken / "audio_ml").mkdir()
    with pytest.raises(ConfigError, match="audio files are missing"):
        datasets.load_ssw60(broken)


def test_soundscape_segments_are_labelled_by_overlapping_calls(soundscapes):
    data = datasets.load_soundscape_dir(soundscapes)
    annotations = pd.read_csv(soundscapes / "annotations.csv")
    rec0 = [i for i, s in enumerate(data.segments) if s.path.name == "rec0.flac"]
    assert len(rec0) == 4  # 22 s: four 5 s segments; the 2 s tail is under half a segment
    codes = {c: i for i, c in enumerate(helpers.EBIRD_CODES)}
    for _, call in annotations[annotations["Filename"] == "rec0.flac"].iterrows():
        species = codes[call["Species eBird Code"]]
        for i in rec0:
            seg = data.segments[i]
            overlaps = call["Start Time (s)"] < seg.end_s and call["End Time (s)"] > seg.start_s
            if overlaps:
                assert data.labels[i, species]
    quiet = [i for i, s in enumerate(data.segments) if s.path.name == "quiet.flac"]
    assert len(quiet) == 1 and not data.labels[quiet].any()  # unannotated recordings are negatives
    assert data.labels.shape == (len(data.segments), 4)


def test_soundscape_unknown_codes_are_refused(soundscapes, tmp_path):
    taxa = tmp_path / "taxa.csv"
    taxa.write_text("key,scientific_name\nredton,Tonus primus\n")
    with pytest.raises(ConfigError, match="not in the species table"):
        datasets.load_soundscapes(soundscapes / "annotations.csv", soundscapes / "soundscape_data", taxa)


def test_a_manifest_as_queries(tmp_path):
    world = helpers.write_tone_world(tmp_path / "w", clips_per_species=3, seconds=1.0)
    queries = datasets.load_query_manifest(world["manifest"], world["taxa"], split="test")
    assert len(queries.clips) == 4 and {c.split for c in queries.clips} == {"test"}
    assert np.array_equal([c.species for c in queries.clips], [0, 1, 2, 3])


@pytest.mark.slow
def test_the_toy_world_small_preset():
    queries, soundscapes, specs = datasets.load_data_set("toy:small")
    assert len(queries.taxa) == 8 and queries.clips and queries.gallery_manifest.is_file()
    assert soundscapes.labels.any() and soundscapes.labels.shape[1] == 8
    assert specs["teacher"] == "toy:small"
