"""A BirdNET-Analyzer user's run, typed as they type it, and their script reading the combined table.

The index holds real species with eBird codes (from the gallery manifest's species_code column), one
without; the recordings are real; the models are the tests' tiny random ones (their detections mean
nothing, but they are deterministic). Everything is given with relative paths, from the folder the
run starts in, as a field team's scripts do.
"""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest

from birdsearch.cli import main

DATA = Path(__file__).parents[1] / "data"
CODES = {"Turdus migratorius": "amerob", "Turdus merula": "eurbla", "Junco hyemalis": "daejun",
         "Passer domesticus": ""}  # eBird's codes; the sparrow's is left out of the manifest  # fmt: skip


@pytest.fixture(scope="module")
def coded_index(tmp_path_factory, tiny_models, helpers) -> Path:
    """An index of drawn photos whose manifest gives eBird species codes."""
    base = tmp_path_factory.mktemp("coded")
    gallery = helpers.write_gallery(base / "photos", tuple(CODES))
    lines = ["path,species,species_code"]
    for photo in sorted(gallery.rglob("*.jpg")):
        species = photo.parent.name.replace("_", " ")
        lines.append(f"{photo.relative_to(base)},{species},{CODES[species]}")
    (base / "gallery.csv").write_text("\n".join(lines) + "\n")
    return helpers.build_index(base / "gallery.csv", base / "index", str(tiny_models["teacher"]))


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    """A recorder's card and a BirdNET species list folder, below the folder the run starts in."""
    card = tmp_path / "cards" / "site07"
    card.mkdir(parents=True)
    shutil.copy(DATA / "audio" / "birdnet_soundscape_48k_30s.flac", card / "dawn.flac")
    shutil.copy(DATA / "audio" / "oss_birds_10s_32k.wav", card / "noon.wav")
    lists = tmp_path / "lists" / "site07"
    lists.mkdir(parents=True)
    (lists / "species_list.txt").write_text(
        "Turdus migratorius_American Robin\nTurdus merula_Eurasian Blackbird\nJunco hyemalis_Dark-eyed Junco\n"
        "Passer domesticus_House Sparrow\nCardinalis cardinalis_Northern Cardinal\nJunco hiemalis\n"
    )  # a species the gallery lacks, and a typo
    monkeypatch.chdir(tmp_path)
    return tmp_path


def birdnet_args(coded_index: Path, tiny_models: dict) -> list[str]:
    return [
        "analyze", "cards", "--output", "out", "--index-root", str(coded_index),
        "--checkpoint", str(tiny_models["encoder"]), "--device", "cpu", "--no-progress",
        "--rtype", "table", "csv", "kaleidoscope",
        "--min_conf", "-1", "--slist", "lists/site07", "--overlap", "0", "--threads", "1", "--batch_size", "4",
        "--merge_consecutive", "3", "--fmin", "500", "--fmax", "12000",
        "--locale", "de", "--names", str(DATA / "world_lists" / "ioc_multilingual_v14.1.csv"),
        "--additional_columns", "min_conf", "overlap",
    ]  # fmt: skip


def birdnet_script(table: Path) -> list[tuple[str, str, float, str, float]]:
    """What BirdNET users' scripts do with a combined selection table: read columns by name."""
    rows = []
    with table.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            rows.append((row["Species Code"], row["Common Name"], float(row["Confidence"]), row["Begin Path"],
                         float(row["File Offset (s)"])))  # fmt: skip
    return rows


def read(path: str, delimiter: str = ",") -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def test_a_birdnet_users_run_and_script(site, coded_index, tiny_models, caplog):
    with caplog.at_level("WARNING"):
        assert main(birdnet_args(coded_index, tiny_models)) == 0
    # The list's unknown names are skipped with one warning that gives the nearest names (BirdNET's default).
    assert "Cardinalis cardinalis" in caplog.text and "nearest: Junco hyemalis" in caplog.text

    rows = birdnet_script(Path("out/combined.birdsearch.selection.table.txt"))
    assert {code for code, *_ in rows} == {
        "amerob",
        "eurbla",
        "daejun",
        "",
    }  # 5 species a window: all 4 listed
    names = {"amerob": "Wanderdrossel", "eurbla": "Eurasian Blackbird", "daejun": "Dark-eyed Junco",
             "": "House Sparrow"}  # German where the IOC excerpt has it, English otherwise  # fmt: skip
    assert all(name == names[code] for code, name, *_ in rows)
    assert {path for *_, path, _ in rows} <= {"cards/site07/dawn.flac", "cards/site07/noon.wav"}  # as given
    assert all(Path(path).is_file() and -1 <= confidence <= 1 for _, _, confidence, path, _ in rows)
    assert "no eBird species code for 1 detected species (Passer domesticus)" in caplog.text  # said once

    raven = read("out/combined.birdsearch.selection.table.txt", "\t")
    assert {(r["Low Freq (Hz)"], r["High Freq (Hz)"]) for r in raven} == {("500", "12000")}  # the band heard
    for species in {r["Scientific Name"] for r in raven}:  # merged: a species' detections never touch
        spans = sorted((float(r["File Offset (s)"]), float(r["End Time (s)"]) - float(r["Begin Time (s)"]))
                       for r in raven if r["Scientific Name"] == species and r["Begin Path"].endswith("dawn.flac"))  # fmt: skip
        assert all(0 < length <= 30 for _, length in spans)
        assert all(a + la < b for (a, la), (b, _) in zip(spans, spans[1:], strict=False))

    kaleidoscope = read("out/combined.birdsearch.kaleidoscope.csv")
    assert len(kaleidoscope) == len(rows)
    assert {(r["INDIR"], r["FOLDER"]) for r in kaleidoscope} == {("cards", "site07")}
    assert {r["IN FILE"] for r in kaleidoscope} <= {"dawn.flac", "noon.wav"}
    table = read("out/combined.birdsearch.csv")
    assert list(table[0])[-2:] == ["min_conf", "overlap"] and {
        (r["min_conf"], r["overlap"]) for r in table
    } == {("-1", "0")}


def test_strict_refuses_the_list_before_anything_is_written(site, coded_index, tiny_models, capsys):
    assert main([*birdnet_args(coded_index, tiny_models), "--strict"]) == 2
    error = capsys.readouterr().err
    assert "2 of 6 species of the list are not in index" in error and "nearest: Junco hyemalis" in error
    assert not Path("out").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--locale", "de"], "IOC World Bird List's multilingual version.*--names FILE"),  # no list of names
        (
            ["--locale", "xx", "--names", str(DATA / "world_lists" / "ioc_multilingual_v14.1.csv")],
            "locale 'xx'",
        ),
        (["--additional_columns", "lat"], "'lat': birdsearch has no location filter"),
        (["--overlap", "2", "--hop-s", "5"], "give a hop or an overlap"),
        (["--fmin", "9000", "--fmax", "8000"], "band-pass 9000–8000 Hz"),
        (["--rtype", "r"], "unknown output format"),
    ],
)
def test_options_birdnet_users_may_get_wrong_are_refused_saying_why(site, tmp_path, capsys, extra, message):
    code = main(["analyze", "cards", "-o", "out", "--index-root", str(tmp_path / "no-index"), *extra])
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
