"""The Python API (``birdsearch.Birdsearch``): the same answer as ``POST /query``, the same detections as ``analyze``."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from birdsearch.analyze.config import AnalyzeConfig
from birdsearch.analyze.run import analyze
from birdsearch.api import Birdsearch

README = Path(__file__).resolve().parents[1] / "README.md"
CLIP = "perch_21100_36_48_16k_10s.ogg"
SOUNDSCAPE = "birdnet_soundscape_48k_30s.flac"


@pytest.fixture(scope="module")
def local(tiny_models, index_root):
    with Birdsearch(index_root=index_root, checkpoint=tiny_models["encoder"], student=str(tiny_models["student"]),
                    cascade="always", device="cpu", max_wait_ms=1.0) as bs:  # fmt: skip
        yield bs


def without_timings(answer: dict) -> dict:
    answer["query"].pop("timings_ms")
    return answer


def test_query_gives_the_answer_of_the_http_api(local, api, helpers):
    path = helpers.audio_file(CLIP)

    async def ask():
        async with api() as (_, client):
            response = await client.post("/query", files={"audio": (path.name, path.read_bytes())},
                                         data={"species_k": "3", "mode": "distilled"})  # fmt: skip
            assert response.status_code == 200, response.text
            return response.json()

    served = helpers.run(ask())
    ours = local.query(path, species_k=3, mode="distilled")
    assert without_timings(ours.model_dump(mode="json")) == without_timings(served)
    assert local.query(path.read_bytes(), species_k=3, mode="distilled").species == ours.species


def test_query_errors_are_the_apis_typed_errors(local):
    from birdsearch.engine.errors import BadParameterError
    from birdsearch.errors import UnsupportedAudioError

    with pytest.raises(UnsupportedAudioError):
        local.query(b"not audio at all" * 10)
    with pytest.raises(BadParameterError, match="Nonexistent species"):
        local.query(Path(__file__).parent / "data" / "audio" / CLIP, species=["Nonexistent species"])


def test_analyze_yields_what_the_command_writes(local, tiny_models, index_root, helpers, tmp_path):
    folder = tmp_path / "recordings"
    folder.mkdir()
    for name in (CLIP, SOUNDSCAPE):
        shutil.copy(helpers.audio_file(name), folder / name)
    (folder / "broken.wav").write_text("no")
    yielded = {Path(r.path).name: r for r in local.analyze(folder, min_conf=-1.0, species_k=2)}
    assert set(yielded) == {CLIP, SOUNDSCAPE}  # the broken file is logged and skipped
    config = AnalyzeConfig(inputs=[str(folder)], out=tmp_path / "out", index_root=index_root,
                           checkpoint=str(tiny_models["encoder"]), device="cpu", min_conf=-1.0, species_k=2,
                           progress=False)  # fmt: skip
    analyze(config)
    import json

    written = [
        json.loads(line) for line in (tmp_path / "out" / "combined.birdsearch.jsonl").read_text().splitlines()
    ]
    from_api = [(Path(r.path).name, d.start_s, d.scientific, d.confidence, d.photo_id)
                for r in yielded.values() for d in r.detections]  # fmt: skip
    from_files = [
        (Path(w["file"]).name, w["start_s"], w["scientific"], w["confidence"], w["photo_id"]) for w in written
    ]
    assert sorted(from_api) == sorted(from_files)


def test_the_documented_example_runs(tiny_models, index_root, helpers, tmp_path, monkeypatch):
    """The README's Python example, run as written in a folder laid out as it assumes."""
    block = re.search(r"## From Python\n.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    (tmp_path / "models").mkdir()
    os.symlink(tiny_models["encoder"], tmp_path / "models" / "encoder")
    os.symlink(index_root, tmp_path / "index")
    (tmp_path / "recordings").mkdir()
    shutil.copy(helpers.audio_file(CLIP), tmp_path / "recordings" / "dawn.ogg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BIRDSEARCH_DEVICE", "cpu")
    monkeypatch.setenv("BIRDSEARCH_STUDENT", str(tiny_models["student"]))
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 (the project's own documentation)
    assert namespace["answer"].species and isinstance(namespace["detections"], list)


def test_the_package_root_exports_the_api_without_loading_it():
    import subprocess
    import sys

    import birdsearch
    from birdsearch.api import Birdsearch as FromModule

    assert birdsearch.Birdsearch is FromModule
    code = "import sys, birdsearch; print('birdsearch.api' in sys.modules, 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["False", "False"], result.stderr
    with pytest.raises(AttributeError, match="no attribute 'Birdsearh'"):
        _ = birdsearch.Birdsearh
