"""Which recordings a run reads: files, folders (recursive), globs; each once, each with its own name."""

from pathlib import Path

from birdsearch.engine.inputs import find_recordings


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folders_are_searched_for_audio_and_skip_the_rest(tmp_path):
    card = tmp_path / "card07"
    for name in ("a.WAV", "night/b.flac", "night/deeper/c.m4a", "LOG.TXT", ".hidden.wav", ".trash/d.wav"):
        touch(card / name)
    recordings, problems = find_recordings([str(card)])
    assert [r.name for r in recordings] == [
        "card07/a.WAV",
        "card07/night/b.flac",
        "card07/night/deeper/c.m4a",
    ]
    assert all(r.path.is_absolute() for r in recordings) and problems == []


def test_files_are_read_whatever_their_name_and_globs_expand(tmp_path):
    notes = touch(tmp_path / "notes.txt")
    touch(tmp_path / "site1" / "x.wav")
    touch(tmp_path / "site2" / "x.wav")
    touch(tmp_path / "site2" / "y.mp3")
    recordings, problems = find_recordings([str(notes), str(tmp_path / "site*" / "*.wav")])
    # Two recordings named x.wav from different folders keep apart.
    assert [r.name for r in recordings] == ["notes.txt", "x.wav", "x.wav~2"]
    assert [r.path.parent.name for r in recordings[1:]] == ["site1", "site2"]
    recursive, _ = find_recordings([str(tmp_path / "**" / "*.mp3")])
    assert [r.name for r in recursive] == ["y.mp3"]


def test_each_recording_is_read_once_and_empty_inputs_are_reported(tmp_path):
    wav = touch(tmp_path / "site" / "a.wav")
    (tmp_path / "empty").mkdir()
    recordings, problems = find_recordings([str(wav), str(tmp_path / "site"), str(tmp_path / "empty"),
                                            str(tmp_path / "missing.wav"), str(tmp_path / "none*.flac")])  # fmt: skip
    assert [r.name for r in recordings] == ["a.wav"]
    reasons = dict(problems)
    assert "holds no audio file" in reasons[str(tmp_path / "empty")]
    assert "no such file or folder" in reasons[str(tmp_path / "missing.wav")]
    assert "matches no audio file" in reasons[str(tmp_path / "none*.flac")]
