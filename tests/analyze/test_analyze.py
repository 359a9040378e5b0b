"""``analyze`` end to end on the toy world's tiny preset: held-out recordings, a soundscape, a phone
recording and junk in; all four formats, failures with reasons, and a rerun that skips what is done.

The recordings and the gallery are the tiny world's; the models are the service tests' tiny random
ones (their detections mean nothing, but they are deterministic, which is what is checked here).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from birdsearch.analyze import formats
from birdsearch.analyze.config import AnalyzeConfig
from birdsearch.analyze.run import analyze, load_engine
from birdsearch.errors import ConfigError

QUERIES = 3  # held-out query recordings analysed


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """The tiny world's photos and recordings, built in a cache private to this module."""
    from birdsearch.toy.config import tiny_config
    from birdsearch.toy.world import ensure_world

    previous = os.environ.get("BIRDSEARCH_CACHE")
    os.environ["BIRDSEARCH_CACHE"] = str(tmp_path_factory.mktemp("toy-cache"))
    try:
        yield ensure_world(tiny_config(), stages=("gallery", "audio"), progress=False)
    finally:
        if previous is None:
            os.environ.pop("BIRDSEARCH_CACHE", None)
        else:
            os.environ["BIRDSEARCH_CACHE"] = previous


@pytest.fixture(scope="module")
def toy_index(tmp_path_factory, tiny_world, tiny_models, helpers) -> Path:
    """The tiny world's gallery indexed with the tiny teacher."""
    return helpers.build_index(tiny_world.gallery_manifest, tmp_path_factory.mktemp("toy-index"),
                               str(tiny_models["teacher"]))  # fmt: skip


def m4a_bytes(seconds: float = 4.0, rate: int = 44_100) -> bytes:
    """A phone-style recording: AAC in an .m4a container, chirps and noise."""
    import av

    rng = np.random.default_rng(3)
    t = np.arange(round(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * (3000 + 800 * np.sin(2 * np.pi * 3 * t)) * t)
               + 0.02 * rng.standard_normal(len(t))).astype(np.float32)[None, :]  # fmt: skip
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=rate, layout="mono")
        for start in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start : start + 1024]),
                                               format="fltp", layout="mono")  # fmt: skip
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def field_card(tmp_path_factory, tiny_world) -> Path:
    """A recorder's card: query recordings, a soundscape, a phone memo, junk, and a log file."""
    card = tmp_path_factory.mktemp("card") / "site1"
    (card / "night").mkdir(parents=True)
    for row in tiny_world.read_manifest(tiny_world.query_manifest)[:QUERIES]:
        source = tiny_world.root / row["path"] if not Path(row["path"]).is_absolute() else Path(row["path"])
        shutil.copy(source, card / source.name)
    soundscape = sorted(tiny_world.soundscape_dir.glob("soundscape_*.flac"))[0]
    shutil.copy(soundscape, card / "night" / soundscape.name)
    (card / "night" / "phone memo.m4a").write_bytes(m4a_bytes())
    (card / "night" / "notes.wav").write_text("not a recording, just text\n" * 20)
    (card / "empty.flac").write_bytes(b"")
    sf.write(card / "silence.wav", np.zeros(48_000, dtype=np.float32), 48_000)
    (card / "LOG.TXT").write_text("battery 87%\n")  # not audio: never read
    return card


@pytest.fixture(scope="module")
def engine_config(tiny_models, toy_index):
    def make(out: Path, inputs, **overrides) -> AnalyzeConfig:
        values = dict(inputs=[str(i) for i in inputs], out=out, index_root=toy_index,
                      checkpoint=str(tiny_models["encoder"]), device="cpu", min_conf=-1.0, species_k=2,
                      batch_size=4, workers=2, progress=False)  # fmt: skip
        values.update(overrides)
        return AnalyzeConfig(**values)

    return make


@pytest.fixture(scope="module")
def engine(engine_config, tmp_path_factory):
    return load_engine(engine_config(tmp_path_factory.mktemp("unused"), ["x"]))


@pytest.fixture(scope="module")
def first_run(engine_config, engine, field_card, tmp_path_factory):
    out = tmp_path_factory.mktemp("detections")
    config = engine_config(out, [field_card, field_card / "missing.wav"])
    return config, analyze(config, engine)


def read_table(path: Path, delimiter: str) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def test_recordings_are_analysed_and_junk_is_listed_with_reasons(first_run, field_card):
    config, summary = first_run
    assert summary.recordings == QUERIES + 5  # the queries, soundscape, memo, notes, empty, silence
    assert summary.analysed == QUERIES + 2 and summary.failed == 3 and summary.skipped == 0
    failures = {Path(r["file"]).name: r for r in read_table(config.out / "failures.csv", ",")}
    assert failures["notes.wav"]["code"] == "unsupported_audio"
    assert (
        failures["empty.flac"]["code"] == "unsupported_audio" and "empty" in failures["empty.flac"]["reason"]
    )
    assert failures["silence.wav"]["code"] == "silent_audio" and failures["silence.wav"]["reason"].startswith(
        "silent"
    )
    assert failures["missing.wav"]["code"] == "no_input"
    assert "LOG.TXT" not in failures


def test_every_format_is_written_per_recording_and_combined(first_run, field_card):
    config, summary = first_run
    out = config.out
    analysed = [p for p in field_card.rglob("*") if p.is_file() and p.name not in
                ("notes.wav", "empty.flac", "silence.wav", "LOG.TXT")]  # fmt: skip
    for recording in analysed:
        name = f"site1/{recording.relative_to(field_card).as_posix()}"
        for fmt in formats.FORMATS:
            assert (out / f"{name}{formats.SUFFIXES[fmt]}").is_file(), (name, fmt)
    for fmt in formats.COMBINED:
        assert (out / f"combined{formats.SUFFIXES[fmt]}").is_file() == (
            fmt in formats.FORMATS
        )  # the defaults
    files = (out / "combined.birdsearch.files.txt").read_text().splitlines()
    assert len(files) == summary.analysed and all(Path(f).is_file() for f in files)
    run = json.loads((out / "run.json").read_text())
    assert run["summary"]["analysed"] == summary.analysed and run["settings_hash"] == summary.settings_hash
    stages = run["summary"]["stage_s"]
    assert set(stages) == {"decode", "waiting", "model", "search", "write"} and stages["model"] > 0
    assert stages["model"] + stages["search"] + stages["write"] < summary.wall_s
    # Windows of all files share forward passes: only the run's last batch (of 4) may be short.
    jsonl = [json.loads(line) for line in (out / "combined.birdsearch.jsonl").read_text().splitlines()]
    windows = len({(r["file"], r["start_s"]) for r in jsonl})  # every window has a detection at min_conf -1
    assert run["forward_passes"] == -(-windows // 4) < summary.analysed


def test_the_combined_raven_table_reads_back_by_column_name(first_run, engine):
    config, summary = first_run
    rows = read_table(config.out / "combined.birdsearch.selection.table.txt", "\t")
    jsonl = [json.loads(line) for line in (config.out / "combined.birdsearch.jsonl").read_text().splitlines()]
    assert len(rows) == len(jsonl) == summary.detections > 0
    species = {s.scientific: s for s in engine.served.species}
    for row, record in zip(rows, jsonl, strict=True):
        assert row["View"] == "Spectrogram 1" and row["Channel"] == "1"
        assert row["Species Code"] == ""  # the toy world's species have no eBird codes
        assert (
            row["Scientific Name"] in species and row["Common Name"] == species[row["Scientific Name"]].common
        )
        assert float(row["Confidence"]) == pytest.approx(record["confidence"], abs=5e-5)
        assert float(row["File Offset (s)"]) == pytest.approx(record["start_s"], abs=1e-3)
        assert row["Begin Path"] == record["file"]
        photo = engine.served.version.images([int(row["Photo Id"])])[0]
        assert photo.species == row["Scientific Name"]  # the photo shows the detected species
        # Its own score: the species' pooled score never exceeds its best photo's.
        assert float(row["Photo Score"]) >= float(row["Confidence"]) - 1e-4
        assert row["Photo Attribution"] == " ".join(photo.attribution.split())
    # The combined table lays the recordings end to end: begin times never go back.
    begins = [float(r["Begin Time (s)"]) for r in rows]
    assert begins == sorted(begins)


def test_min_conf_minus_one_keeps_species_k_per_window(first_run, field_card):
    config, _ = first_run
    soundscape = next((field_card / "night").glob("soundscape_*.flac"))
    rows = read_table(config.out / f"site1/night/{soundscape.name}.birdsearch.csv", ",")
    duration = sf.info(soundscape).duration
    starts = sorted({float(r["Start (s)"]) for r in rows})
    # 10 s windows every 10 s; the last holds the rest of the recording, dropped under 1 s (BirdNET's rule)
    whole, rest = divmod(duration, 10.0)
    assert starts == [10.0 * i for i in range(int(whole) + (rest >= 1.0))]
    windows = len(starts)
    assert len(rows) == 2 * windows  # species_k=2, and min_conf=-1 keeps every species scored
    ends = sorted({float(r["End (s)"]) for r in rows})
    assert ends[-1] <= round(duration, 3) and all(b - a == 10.0 for a, b in zip(starts, ends, strict=True))
    labels = (config.out / f"site1/night/{soundscape.name}.birdsearch.labels.txt").read_text().splitlines()
    assert len(labels) == len(rows) and all(len(line.split("\t")) == 3 for line in labels)


def test_a_rerun_skips_everything_done_and_changes_nothing(first_run, engine):
    config, summary = first_run
    before = {p: p.read_bytes() for p in config.out.rglob("*.birdsearch.*")}
    again = analyze(config, engine)
    assert again.analysed == 0 and again.skipped == summary.analysed and again.failed == summary.failed
    assert {p: p.read_bytes() for p in config.out.rglob("*.birdsearch.*")} == before


def test_other_settings_redo_the_recordings(first_run, engine, engine_config, tmp_path):
    config, summary = first_run
    out = tmp_path / "strict"
    shutil.copytree(config.out, out)
    strict = analyze(engine_config(out, config.inputs, min_conf=2.0), engine)  # cosine never reaches 2
    assert strict.analysed == summary.analysed and strict.skipped == 0 and strict.detections == 0
    rows = read_table(out / "combined.birdsearch.selection.table.txt", "\t")
    assert rows == []  # the header alone


def test_a_species_list_keeps_only_its_species(engine_config, engine, field_card, tmp_path):
    chosen = engine.served.species[1]
    species_list = tmp_path / "site1_week20.txt"
    species_list.write_text(f"# made by hand\n{chosen.scientific}_{chosen.common}\n")
    config = engine_config(tmp_path / "out", [field_card / "night"], species_list=species_list)
    summary = analyze(config, load_engine(config))
    rows = read_table(tmp_path / "out" / "combined.birdsearch.csv", ",")
    assert summary.detections == len(rows) > 0
    assert {r["Scientific name"] for r in rows} == {chosen.scientific}


def test_a_misspelt_species_is_skipped_with_the_nearest_names_and_strict_stops_before_loading_models(
    engine_config, engine, tmp_path, caplog
):
    name, other = engine.served.species[0].scientific, engine.served.species[1].scientific
    species_list = tmp_path / "list.txt"
    species_list.write_text(f"{name[:-1]}x\n{other}\n")
    with caplog.at_level("WARNING"):
        loaded = load_engine(engine_config(tmp_path / "out", ["x"], species_list=species_list))
    assert loaded.species_names == [other]
    assert f"nearest: {name}" in caplog.text and "skipped" in caplog.text
    with pytest.raises(ConfigError, match=f"nearest: {name}.*leave out --strict"):
        load_engine(
            engine_config(tmp_path / "out", ["x"], species_list=species_list, strict_species_list=True)
        )


@pytest.mark.parametrize("mode", ["distilled", "cascade"])
def test_detections_match_the_query_services_timeline(
    mode, first_run, engine_config, helpers, api, toy_index, field_card, tiny_models, tmp_path
):
    """The same recording gives the same window scores through ``analyze`` and ``POST /query``."""
    recording = next((field_card / "night").glob("soundscape_*.flac"))  # several windows
    if mode == "distilled":
        out = first_run[0].out
    else:
        out = tmp_path / "cascade"
        config = engine_config(
            out, [recording], checkpoint="", student=str(tiny_models["student"]), mode=mode
        )
        assert analyze(config).analysed == 1
    rows = [json.loads(line) for line in (out / (
        f"site1/night/{recording.name}.birdsearch.jsonl" if mode == "distilled" else f"{recording.name}.birdsearch.jsonl"
    )).read_text().splitlines()]  # fmt: skip

    async def ask():
        async with api(index_root=toy_index) as (_, client):
            response = await client.post("/query", files={"audio": (recording.name, recording.read_bytes())},
                                         data={"mode": mode, "species_k": "2"})  # fmt: skip
            assert response.status_code == 200, response.text
            return response.json()

    answer = helpers.run(ask())
    served = [(w["start_s"], s["species"], s["score"]) for w in answer["timeline"] for s in w["species"]]
    ours = [(r["start_s"], r["scientific"], r["confidence"]) for r in rows]
    assert len(ours) == len(served)
    for (start, species, score), (s_start, s_species, s_score) in zip(ours, served, strict=True):
        assert (start, species) == (pytest.approx(s_start, abs=1e-3), s_species)
        assert score == pytest.approx(s_score, abs=1e-5)


def test_the_command_exits_0_with_failures_listed(tiny_models, toy_index, field_card, tmp_path, capsys):
    from birdsearch.cli import main

    out = tmp_path / "cli"
    code = main(["-q", "analyze", str(field_card / "night"), str(field_card / "empty.flac"), "--out", str(out),
                 "--index-root", str(toy_index), "--checkpoint", str(tiny_models["encoder"]), "--device", "cpu",
                 "--format", "raven,csv", "--min-conf", "-1", "--no-progress"])  # fmt: skip
    assert code == 0
    assert (out / "combined.birdsearch.selection.table.txt").is_file()
    assert not (out / "combined.birdsearch.jsonl").exists()  # only the formats asked for
    failed = {Path(r["file"]).name for r in read_table(out / "failures.csv", ",")}
    assert failed == {"notes.wav", "empty.flac"}


def test_the_command_refuses_an_unknown_format(tmp_path, capsys):
    from birdsearch.cli import main

    assert main(["analyze", str(tmp_path), "--out", str(tmp_path / "o"), "--format", "csv,xlsx"]) == 2
    assert "'xlsx'" in capsys.readouterr().err


def test_analyze_imports_neither_the_toy_world_nor_the_cli():
    """An app on the engine: analyze may use the engine and the core, never the toy world or the console script."""
    import ast

    package = Path(formats.__file__).parent
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])  # fmt: skip
            for name in names:
                assert not name.startswith("birdsearch.toy") and name != "birdsearch.cli", (source.name, name)


def test_windows_and_hops_are_bounded(tmp_path):
    from birdsearch.engine.batch import resolve_window

    def config(**values) -> AnalyzeConfig:
        return AnalyzeConfig(inputs=["x"], out=tmp_path, index_root=tmp_path, **values)

    assert resolve_window(config(), 10.0) == (10.0, 10.0)
    assert resolve_window(config(window_s=5.0, hop_s=2.5), 10.0) == (5.0, 2.5)
    with pytest.raises(ConfigError, match="between 1 and the model's window of 10 s"):
        resolve_window(config(window_s=12.0), 10.0)
    with pytest.raises(ConfigError, match="below the minimum of 1 s"):
        resolve_window(config(hop_s=0.1), 10.0)
    with pytest.raises(ConfigError, match="species_k=0"):
        config(species_k=0)


def test_a_band_pass_gives_the_same_detections_through_analyze_and_the_api(
    engine_config, engine, helpers, api, toy_index, field_card, tmp_path
):
    recording = next((field_card / "night").glob("soundscape_*.flac"))
    banded = analyze(engine_config(tmp_path / "band", [recording], fmin_hz=1000.0, fmax_hz=8000.0), engine)
    assert banded.analysed == 1
    rows = [
        json.loads(line)
        for line in (tmp_path / "band" / "combined.birdsearch.jsonl").read_text().splitlines()
    ]
    raven = read_table(tmp_path / "band" / "combined.birdsearch.selection.table.txt", "\t")
    assert {(r["Low Freq (Hz)"], r["High Freq (Hz)"]) for r in raven} == {("1000", "8000")}

    async def ask(**band):
        async with api(index_root=toy_index) as (_, client):
            response = await client.post("/query", files={"audio": (recording.name, recording.read_bytes())},
                                         data={"species_k": "2", **band})  # fmt: skip
            return response

    answer = helpers.run(ask(fmin_hz="1000", fmax_hz="8000"))
    assert answer.status_code == 200, answer.text
    served = [
        (w["start_s"], s["species"], s["score"]) for w in answer.json()["timeline"] for s in w["species"]
    ]
    ours = [(r["start_s"], r["scientific"], r["confidence"]) for r in rows]
    assert [(a, b) for a, b, _ in ours] == [(a, b) for a, b, _ in served]
    assert [c for *_, c in ours] == pytest.approx([c for *_, c in served], abs=1e-5)
    unbanded = helpers.run(ask()).json()["timeline"]
    assert [s["score"] for w in unbanded for s in w["species"]] != [
        c for *_, c in served
    ]  # the band mattered
    refused = helpers.run(ask(fmin_hz="9000", fmax_hz="8000"))
    assert refused.status_code == 422 and "fmin_hz/fmax_hz" in refused.text


def test_a_long_recording_streamed_in_parts_gets_the_detections_of_a_whole_file_decode(
    engine, field_card, tmp_path
):
    """More windows than a recording holds back (HELD_WINDOWS), in parts of 4: the same detections as
    the whole recording decoded at once, cut by ``audio.split`` and embedded in one go."""
    from birdsearch.engine.batch import HELD_WINDOWS, BatchOptions, BatchRun
    from birdsearch.engine.detections import confident
    from birdsearch.engine.inputs import Recording
    from birdsearch.model import audio

    soundscape = next((field_card / "night").glob("soundscape_*.flac"))
    samples, rate = sf.read(soundscape, dtype="float32")
    long = tmp_path / "long.flac"
    sf.write(long, np.tile(samples, 8)[: int(6.5 * len(samples))], rate)  # ~200 s: 20 windows and a tail
    options = BatchOptions(min_conf=-1.0, species_k=2, batch_size=4, workers=1)
    [(_, streamed)] = list(BatchRun(engine, options, "cpu").run([Recording(long, "long.flac")]))
    assert not isinstance(streamed, BaseException), streamed

    whole = audio.load(long)
    windows = audio.split(whole.samples, whole.sample_rate)
    assert len(windows.starts_s) > HELD_WINDOWS
    vectors = engine.vectors(engine.embedder(windows.samples))
    expected = confident(engine.detect(vectors, windows.starts_s, 10.0, whole.duration_s, species_k=2, min_conf=-1.0,
                                       candidates_per_window=options.candidates_per_window,
                                       species_rule=options.species_rule), -1.0)  # fmt: skip
    assert streamed.duration_s == pytest.approx(whole.duration_s, abs=1e-3)
    assert [(d.start_s, d.end_s, d.scientific, d.photo_id) for d in streamed.detections] == [
        (d.start_s, d.end_s, d.scientific, d.photo_id) for d in expected
    ]
    assert [d.confidence for d in streamed.detections] == pytest.approx(
        [d.confidence for d in expected], abs=1e-5
    )
