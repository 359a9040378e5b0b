"""`birdsearch demo` on the tiny toy world: it serves first and evaluates in the background, then
serves again from its cache; `--no-serve` prints what the page shows."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from birdsearch.model.calibration import load_calibration
from birdsearch.model.novelty import load_open_set
from birdsearch.toy.config import tiny_config

METHODS = {"random", "cascade-hard", "cascade-soft", "map-ridge", "map-procrustes", "map-mlp", "distilled",
           "distilled+classifier", "distilled+hybrid"}  # fmt: skip


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory) -> dict[str, str]:
    cache = tmp_path_factory.mktemp("demo-cache")
    return {**os.environ, "BIRDSEARCH_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


def world_root(env: dict[str, str]) -> Path:
    return next(p for p in Path(env["BIRDSEARCH_CACHE"]).glob("toy/tiny-*") if p.is_dir())  # not the .lock


def demo(env: dict[str, str], *args: str, **kwargs) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "birdsearch.cli",
        "-q",
        "demo",
        "--preset",
        "tiny",
        "--device",
        "cpu",
        *args,
    ]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answer(url: str, recording: Path, **form: str) -> httpx.Response:
    with open(recording, "rb") as f:
        return httpx.post(f"{url}/query", files={"audio": f}, data=form, timeout=30)


class Served:
    """``birdsearch demo`` serving on a free port, in a session of its own (stopped with its children)."""

    def __init__(self, env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = time.monotonic()
        self.process = demo(env, "--port", str(self.port), start_new_session=True)

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds from the start until ``/readyz`` answers 200."""
        while time.monotonic() - self.started < timeout_s and self.process.poll() is None:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        stop(self.process)
        raise AssertionError(self.process.stderr.read()[-3000:] or f"not ready in {timeout_s} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=60)


@pytest.fixture(scope="module")
def first_run(demo_env):
    """A first run on an empty cache: the first answer, then the page's evaluation once it is ready."""
    served = Served(demo_env)
    try:
        served.wait_ready(300)
        example = sorted((world_root(demo_env) / "examples").iterdir())[0]
        first = answer(served.url, example, min_conf="0.05")
        pending = httpx.get(f"{served.url}/evaluation", timeout=10).json()
        deadline = time.monotonic() + 600
        while not (report := httpx.get(f"{served.url}/evaluation", timeout=10).json())["ready"]:
            assert time.monotonic() < deadline and served.process.poll() is None, "no evaluation in 600 s"
            time.sleep(1)
    finally:
        stop(served.process)
    return {"first": first, "pending": pending, "report": report}


def test_the_first_run_answers_before_the_evaluation_is_done(first_run, demo_env):
    assert first_run["first"].status_code == 200, first_run["first"].text
    # The shipped calibration is installed before the first answer: min_conf works at once.
    assert all(hit["confidence"] >= 0.05 for hit in first_run["first"].json()["species"])
    assert first_run["pending"] == {"ready": False, "markdown": None}
    assert "| `distilled` |" in first_run["report"]["markdown"]
    assert str(demo_env["BIRDSEARCH_CACHE"]) not in first_run["report"]["markdown"]  # no server paths


def test_examples_are_the_first_query_recording_of_each_species(first_run, demo_env):
    root = world_root(demo_env)
    examples = sorted((root / "examples").iterdir())
    assert len(examples) == tiny_config().n_species
    for example in examples:
        species = example.name.split("_query_")[0]
        assert example.read_bytes() == (root / "audio" / "query" / species / example.name).read_bytes()


def test_no_serve_prints_the_evaluation_the_page_shows(first_run, demo_env):
    process = demo(demo_env, "--no-serve", "--json")
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    reports = json.loads(out)
    assert set(reports) == {"realistic", "perfect"}
    for report in reports.values():
        methods = report["queries"]["methods"]
        assert set(methods) >= METHODS
        for entry in methods.values():
            assert 0.0 <= entry["retrieval"]["mAP"] <= 1.0
        assert report["queries"]["gallery"]["source"] == "index"
    process = demo(demo_env, "--no-serve")
    out, _ = process.communicate(timeout=600)
    rows = [line for line in first_run["report"]["markdown"].splitlines() if line.startswith("| `")]
    assert len(rows) > 2 * len(METHODS) and all(row in out for row in rows)
    # Confidences and open-set gates for what the demo serves (its encoder's modes, and the cascade),
    # fitted on held-out clips, background and the open world's validation recordings.
    demo_root = world_root(demo_env) / "demo"
    encoder, index = demo_root / "encoder-realistic" / "encoder", demo_root / "index"
    for mode, folder in [
        ("distilled", encoder),
        ("classifier", encoder),
        ("hybrid", encoder),
        ("cascade", index),
    ]:
        facts = load_calibration(folder / "calibration.json")[mode].facts
        assert facts["background_clips"] == 8 and facts["clips"] > 8 and facts["outside_clips"] > 0
        gate = load_open_set(folder / "open_set.json")[mode]
        assert gate.facts["validation_windows"].keys() >= {
            "in_gallery",
            "out_of_gallery",
            "non_bird",
            "shifted",
        }
    assert (encoder / "novelty_reference.safetensors").is_file()


def test_a_second_run_reuses_everything_and_serves_within_seconds(first_run, demo_env):
    card = world_root(demo_env) / "demo" / "encoder-realistic" / "encoder" / "card.json"
    installed_at = card.stat().st_mtime
    served = Served(demo_env)
    try:
        assert served.wait_ready(60) < 30
        assert httpx.get(f"{served.url}/evaluation", timeout=10).json() == first_run["report"]
        query = next((world_root(demo_env) / "audio" / "query").rglob("*.ogg"))
        response = answer(served.url, query, min_conf="0.05")
        assert response.status_code == 200, response.text
        assert all(hit["confidence"] >= 0.05 for hit in response.json()["species"])
        # It serves the mode its encoder's validation chose among those that can abstain, and says why.
        recorded = json.loads(card.read_text())["metrics"]["modes"]
        version = httpx.get(f"{served.url}/version", timeout=10).json()
        assert version["default_mode"] == recorded["default"] == "distilled" and set(recorded["val_mAP"]) == {
            "distilled", "classifier", "hybrid"}  # fmt: skip
        assert version["default_mode_reason"] == recorded["why"]
        assert response.json()["query"]["model"]["mode"] == recorded["default"]
        assert set(version["modes"]) == set(version["open_set"]) == {"distilled", "classifier", "hybrid"}
    finally:
        stop(served.process)
    assert card.stat().st_mtime == installed_at  # not installed again
