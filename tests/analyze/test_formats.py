"""Output formats: each is read back the way the tool that uses it reads it."""

import csv
import io
import json

import pytest

from birdsearch.analyze import formats
from birdsearch.engine.detections import Detection, RecordingResult
from birdsearch.errors import ConfigError
from birdsearch.files import write_atomic


def detection(
    start: float, species: str, confidence: float, photo: int, attribution: str = "A. Photographer"
) -> Detection:
    common = {"Turdus migratorius": "American Robin", "Junco hyemalis": "Dark-eyed Junco"}[species]
    code = {"Turdus migratorius": "amerob", "Junco hyemalis": ""}[species]  # an index may lack a code
    return Detection(start, start + 10.0, species, common, confidence, photo, confidence, "CC BY 4.0",
                     attribution, f"hash{photo}", species_code=code)  # fmt: skip


@pytest.fixture
def results() -> list[RecordingResult]:
    first = RecordingResult(
        "site1/dawn.flac", 25.0, 32_000,
        [detection(0.0, "Turdus migratorius", 0.81234, 7), detection(10.0, "Junco hyemalis", 0.5, 3)],
    )  # fmt: skip
    empty = RecordingResult("site1/wind.wav", 12.0, 48_000, [])
    # A tab and a line break in an attribution must not shift the columns.
    last = RecordingResult(
        "site2/noon.m4a", 40.0, 48_000, [detection(30.0, "Junco hyemalis", 0.7, 4, "J. Doe\tvia\nFlickr")]
    )
    return [first, empty, last]


def read_raven(text: str) -> list[dict[str, str]]:
    """As Raven Pro reads a selection table: tab-separated, columns found by their header names."""
    return list(csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))


def test_raven_table_has_ravens_columns_and_reads_back_by_name(results):
    rows = read_raven(formats.render_raven(results[:1]))
    header = formats.render_raven(results[:1]).splitlines()[0].split("\t")
    assert header[:7] == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                          "High Freq (Hz)"]  # fmt: skip
    assert len(rows) == 2
    robin = rows[0]
    assert robin["Selection"] == "1" and robin["View"] == "Spectrogram 1" and robin["Channel"] == "1"
    assert float(robin["Begin Time (s)"]) == 0.0 and float(robin["End Time (s)"]) == 10.0
    assert float(robin["Low Freq (Hz)"]) == 0.0
    assert float(robin["High Freq (Hz)"]) == 14_000.0  # the model's band, below the 16 kHz Nyquist
    assert (
        robin["Common Name"] == "American Robin" and robin["Species Code"] == "amerob"
    )  # eBird's, as BirdNET
    assert rows[1]["Species Code"] == "" and rows[1]["Scientific Name"] == "Junco hyemalis"  # none: empty
    assert robin["Confidence"] == "0.8123" and robin["Begin Path"] == "site1/dawn.flac"
    assert robin["Photo Id"] == "7" and robin["Photo Attribution"] == "A. Photographer"
    assert rows[1]["Selection"] == "2" and float(rows[1]["File Offset (s)"]) == 10.0


def test_combined_raven_table_places_recordings_one_after_another(results):
    rows = read_raven(formats.render_raven(results, combined=True))
    assert [r["Selection"] for r in rows] == ["1", "2", "3"]
    last = rows[2]
    # 25 s + 12 s of recordings before it (the silent one counts too), then 30 s into its own file.
    assert float(last["Begin Time (s)"]) == pytest.approx(67.0)
    assert float(last["File Offset (s)"]) == pytest.approx(30.0)
    assert last["Begin Path"] == "site2/noon.m4a"
    assert last["Photo Attribution"] == "J. Doe via Flickr"
    assert all(len(line.split("\t")) == len(formats.RAVEN_COLUMNS)
               for line in formats.render_raven(results, combined=True).splitlines())  # fmt: skip


def test_csv_reads_back_with_birdnets_columns_first(results):
    rows = list(csv.DictReader(io.StringIO(formats.render_csv(results))))
    assert list(rows[0])[:6] == [
        "Start (s)",
        "End (s)",
        "Scientific name",
        "Common name",
        "Confidence",
        "File",
    ]
    assert [(r["File"], r["Scientific name"]) for r in rows] == [
        ("site1/dawn.flac", "Turdus migratorius"),
        ("site1/dawn.flac", "Junco hyemalis"),
        ("site2/noon.m4a", "Junco hyemalis"),
    ]
    assert rows[2]["Photo attribution"] == "J. Doe\tvia\nFlickr"  # CSV quotes it whole


def test_audacity_labels_are_start_end_label(results):
    lines = formats.render_audacity(results[0]).splitlines()
    assert [line.split("\t") for line in lines] == [
        ["0.000000", "10.000000", "American Robin (Turdus migratorius) 0.812"],
        ["10.000000", "20.000000", "Dark-eyed Junco (Junco hyemalis) 0.500"],
    ]
    assert formats.render_audacity(results[1]) == ""
    with pytest.raises(ValueError, match="per recording"):
        formats.render("audacity", results, combined=True)


def test_jsonl_has_every_field(results):
    rows = [json.loads(line) for line in formats.render_jsonl(results).splitlines()]
    assert len(rows) == 3
    assert rows[0] == {
        "file": "site1/dawn.flac", "start_s": 0.0, "end_s": 10.0, "scientific": "Turdus migratorius",
        "common": "American Robin", "confidence": 0.81234, "photo_id": 7, "photo_score": 0.81234,
        "photo_license": "CC BY 4.0", "photo_attribution": "A. Photographer", "photo_hash": "hash7",
        "score": None, "species_code": "amerob",
    }  # fmt: skip


def test_results_round_trip_through_dicts(results):
    assert [RecordingResult.from_dict(json.loads(json.dumps(r.to_dict()))) for r in results] == results


def test_format_lists_are_checked():
    assert formats.parse_formats("raven, CSV,raven") == ["raven", "csv"]
    assert formats.parse_formats("table kaleidoscope csv") == [
        "raven",
        "kaleidoscope",
        "csv",
    ]  # BirdNET's --rtype
    with pytest.raises(ConfigError, match="'xls'.*csv, raven, audacity, jsonl, kaleidoscope"):
        formats.parse_formats("csv,xls")


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "out" / "a.txt"
    write_atomic(target, "one\n")
    write_atomic(target, "two\n")
    assert target.read_text() == "two\n"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_tables_follow_the_umask_so_that_colleagues_can_read_them(tmp_path, umask):
    umask(0o002)  # a shared group's folder
    write_atomic(tmp_path / "detections.csv", "file,start_s\n")
    assert (tmp_path / "detections.csv").stat().st_mode & 0o777 == 0o664


def test_a_recording_is_done_only_with_the_same_settings_files_and_source(tmp_path, results):
    import os
    from dataclasses import replace

    from birdsearch.analyze.writer import Outputs
    from birdsearch.engine.inputs import Recording

    source = tmp_path / "dawn.flac"
    source.write_bytes(b"audio")
    recording = Recording(source, "site1/dawn.flac")
    outputs = Outputs(tmp_path / "out", ["csv", "raven"], "hash1")
    assert outputs.done(recording) is None
    outputs.write(recording, results[0])
    assert outputs.done(recording) == replace(results[0], path=str(source))  # the path as given this time
    assert Outputs(tmp_path / "out", ["csv", "raven"], "hash2").done(recording) is None  # other settings
    # a format not written yet, or a deleted output: written again from the state, without the model
    assert Outputs(tmp_path / "out", ["csv", "jsonl"], "hash1").done(recording) is not None
    assert (tmp_path / "out" / "site1" / "dawn.flac.birdsearch.jsonl").is_file()
    (tmp_path / "out" / "site1" / "dawn.flac.birdsearch.csv").unlink()
    assert (
        outputs.done(recording) is not None
        and (tmp_path / "out" / "site1" / "dawn.flac.birdsearch.csv").is_file()
    )
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert outputs.done(recording) is None  # the recording changed since


def test_kaleidoscope_has_birdnets_columns_with_folders_split_as_birdnet_splits_them(results):
    text = formats.render_kaleidoscope(results, formats.Table(overlap_s=2.5))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == (
        "INDIR,FOLDER,IN FILE,OFFSET,DURATION,scientific_name,common_name,confidence,lat,lon,week,overlap,sensitivity"
    )  # BirdNET-Analyzer 2.4's KALEIDOSCOPE_HEADER
    robin = rows[0]
    assert (robin["INDIR"], robin["FOLDER"], robin["IN FILE"]) == ("", "site1", "dawn.flac")
    assert float(robin["OFFSET"]) == 0.0 and float(robin["DURATION"]) == 10.0
    assert (robin["scientific_name"], robin["common_name"], robin["confidence"]) == (
        "Turdus migratorius", "American Robin", "0.8123",
    )  # fmt: skip
    assert (robin["lat"], robin["lon"], robin["week"]) == (
        "-1.0000",
        "-1.0000",
        "-1",
    )  # BirdNET's "not given"
    assert (robin["overlap"], robin["sensitivity"]) == ("2.5", "1")
    assert [r["IN FILE"] for r in rows] == ["dawn.flac", "dawn.flac", "noon.m4a"]


def test_additional_columns_follow_birdnets_csv_columns(results):
    table = formats.Table((("min_conf", "0.25"), ("overlap", "0")))
    rows = list(csv.DictReader(io.StringIO(formats.render_csv(results, table))))
    assert list(rows[0])[-2:] == ["min_conf", "overlap"] and {r["min_conf"] for r in rows} == {"0.25"}
