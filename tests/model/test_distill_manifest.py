"""Manifests are untrusted input: every problem is found before training, with the rows named."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from birdsearch.errors import ConfigError
from birdsearch.model.distill.manifest import (
    hold_out,
    load_manifest,
    load_species_table,
    write_species_table,
)

sys.path.insert(0, str(Path(__file__).parent))
import conftest_distill as helpers  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return helpers.write_tone_world(tmp_path_factory.mktemp("tones"), clips_per_species=4, seconds=1.0)


def write(tmp_path, rows, name="m.csv"):
    path = tmp_path / name
    frame = pd.DataFrame(rows)
    if name.endswith(".parquet"):
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path


def audio(world, i=0):
    return str(world["root"] / "audio" / f"s0_{i}.wav")


def test_a_good_manifest_with_a_species_table(world):
    manifest = load_manifest(world["manifest"], world["taxa"])
    assert len(manifest.taxa) == 4
    assert {c.split for c in manifest.clips} == {"train", "val", "test"}
    assert manifest.taxa[0].common == "Red Tonebird"
    assert len(manifest.digest()) == 64
    assert manifest.digest() == load_manifest(world["manifest"], world["taxa"]).digest()


def test_species_by_common_name_or_key_any_case(world, tmp_path):
    taxa = write(
        tmp_path, [{"key": "ton1", "scientific_name": "Tonus primus", "common_name": "Red Tonebird"}], "t.csv"
    )
    rows = [
        {"path": audio(world, i), "species": name}
        for i, name in enumerate(["red  tonebird", "TON1", "Tonus primus"])
    ]
    manifest = load_manifest(write(tmp_path, rows), taxa, val_fraction=0.0)
    assert [c.species for c in manifest.clips] == [0, 0, 0]


def test_parquet_and_times(world, tmp_path):
    rows = [{"audio": audio(world), "label": "Tonus primus", "start_s": 0.1, "end_s": 0.5, "split": "train"}]
    manifest = load_manifest(write(tmp_path, rows, "m.parquet"), world["taxa"], val_fraction=0.0)
    assert (manifest.clips[0].start_s, manifest.clips[0].end_s) == (0.1, 0.5)


def test_missing_columns_are_named(world, tmp_path):
    with pytest.raises(ConfigError, match="no species column.*found: path"):
        load_manifest(write(tmp_path, [{"path": audio(world)}]), world["taxa"])
    with pytest.raises(ConfigError, match="no audio path column"):
        load_manifest(write(tmp_path, [{"species": "Tonus primus"}]), world["taxa"])


def test_every_problem_is_reported_with_its_line(world, tmp_path):
    rows = [
        {"path": audio(world), "species": "Tonus primus", "start_s": "", "end_s": ""},
        {"path": "nowhere.wav", "species": "Tonus primus", "start_s": "", "end_s": ""},
        {"path": audio(world), "species": "Dodo", "start_s": "", "end_s": ""},
        {"path": audio(world), "species": "Tonus primus", "start_s": "2", "end_s": "1"},
        {"path": audio(world), "species": "Tonus primus", "start_s": "abc", "end_s": ""},
    ]
    with pytest.raises(ConfigError) as error:
        load_manifest(write(tmp_path, rows), world["taxa"])
    message = str(error.value)
    assert "missing audio file (line 3:" in message and "nowhere.wav" in message
    assert "unknown species (line 4: 'Dodo')" in message
    assert "2 bad times (line 5:" in message and "line 6:" in message
    assert "--taxa" in message  # the fix is named


def test_times_past_the_end_and_unreadable_files(world, tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 10)
    rows = [
        {"path": audio(world), "species": "Tonus primus", "end_s": "5.0"},  # the file is 1 s long
        {"path": str(junk), "species": "Tonus primus", "end_s": ""},
    ]
    with pytest.raises(ConfigError) as error:
        load_manifest(write(tmp_path, rows), world["taxa"])
    assert "times outside the recording" in str(error.value)
    assert "unreadable audio" in str(error.value) and "junk.wav" in str(error.value)
    load_manifest(write(tmp_path, rows[:1]), world["taxa"], check_audio=False)  # header checks can be skipped


def test_unknown_split_and_empty_manifest(world, tmp_path):
    with pytest.raises(ConfigError, match="unknown split.*'dev'"):
        load_manifest(
            write(tmp_path, [{"path": audio(world), "species": "Tonus primus", "split": "dev"}]),
            world["taxa"],
        )
    (tmp_path / "empty.csv").write_text("path,species\n")
    with pytest.raises(ConfigError, match="no rows"):
        load_manifest(tmp_path / "empty.csv", world["taxa"])


def test_without_a_species_table_binomials_are_required(world, tmp_path):
    manifest = load_manifest(
        write(tmp_path, [{"path": audio(world), "species": "Tonus primus"}]), val_fraction=0.0
    )
    assert manifest.taxa[0].scientific == "Tonus primus"
    with pytest.raises(ConfigError, match="not binomials.*--taxa"):
        load_manifest(write(tmp_path, [{"path": audio(world), "species": "Robin"}]))


def test_taxonomy_columns_in_the_manifest_itself(world, tmp_path):
    rows = [
        {
            "path": audio(world),
            "scientific_name": "Tonus primus",
            "common_name": "Red Tonebird",
            "family": "Tonidae",
        }
    ]
    manifest = load_manifest(write(tmp_path, rows), val_fraction=0.0)
    assert manifest.taxa[0].common == "Red Tonebird" and manifest.taxa[0].family == "Tonidae"


def test_species_table_round_trip_and_ssw60_family_gloss(tmp_path):
    path = write(
        tmp_path,
        [
            {
                "scientific_name": "Branta canadensis",
                "common_name": "Canada Goose",
                "order": "Anseriformes",
                "family": "Anatidae (Ducks, Geese, and Waterfowl)",
            }
        ],  # fmt: skip
        "taxa.csv",
    )
    table = load_species_table(path)
    assert table.taxa[0].family == "Anatidae"
    again = load_species_table(write_species_table(table.taxa, tmp_path / "again.csv"))
    assert again.taxa == table.taxa
    with pytest.raises(ConfigError, match="repeats line 2"):
        load_species_table(write(tmp_path, [{"scientific_name": "Aix sponsa"}] * 2, "dup.csv"))


def test_hold_out_is_per_species_and_deterministic(world):
    manifest = load_manifest(world["manifest"], world["taxa"])
    train = [c for c in manifest.clips if c.split == "train"]
    held = hold_out(train, 0.5, seed=1)
    assert held == hold_out(train, 0.5, seed=1)
    per_species = {s: sum(c.split == "val" for c in held if c.species == s) for s in range(4)}
    assert all(count == 1 for count in per_species.values())  # 2 train clips each -> 1 held out


def test_short_audio_segment_decodes(world):
    from birdsearch.model.distill.data import read_segment
    from birdsearch.model.distill.manifest import Clip

    clip = Clip(Path(audio(world)), 0, 0.25, 0.75)
    samples = read_segment(clip, 48_000)
    assert len(samples) == pytest.approx(24_000, abs=2)
    whole, rate = sf.read(audio(world), dtype="float32")
    assert rate == helpers.SAMPLE_RATE and np.isfinite(samples).all()
