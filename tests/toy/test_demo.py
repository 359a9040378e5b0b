"""`birdsearch demo`: the whole pipeline end to end on the tiny toy world, then cached, then serving."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

METHODS = {"random", "cascade-hard", "cascade-soft", "map-ridge", "map-procrustes", "map-mlp", "distilled"}


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory) -> dict[str, str]:
    cache = tmp_path_factory.mktemp("demo-cache")
    return {**os.environ, "BIRDSEARCH_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


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


@pytest.fixture(scope="module")
def first_run(demo_env):
    process = demo(demo_env, "--no-serve", "--json")
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out)


def test_the_demo_evaluates_every_method_with_both_students(first_run, demo_env):
    assert set(first_run) == {"realistic", "perfect"}
    for report in first_run.values():
        methods = report["queries"]["methods"]
        assert set(methods) >= METHODS
        for entry in methods.values():
            assert 0.0 <= entry["retrieval"]["mAP"] <= 1.0
        assert report["queries"]["gallery"]["source"] == "index"
    encoders = list(Path(demo_env["BIRDSEARCH_CACHE"]).glob("toy/tiny-*/demo/encoder-*/encoder/card.json"))
    assert len(encoders) == 2
    # Confidences fitted on held-out clips for what the demo serves: its encoder and the cascade.
    demo_root = encoders[0].parents[2]
    fits = {
        mode: json.loads(path.read_text())["modes"][mode]["facts"]
        for mode, path in [("distilled", demo_root / "encoder-realistic" / "encoder" / "calibration.json"),
                           ("cascade", demo_root / "index" / "calibration.json")]
    }  # fmt: skip
    for facts in fits.values():
        assert facts["background_clips"] == 8 and facts["clips"] > 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_second_run_reuses_everything_and_serves_within_seconds(first_run, demo_env):
    root = next(
        p for p in Path(demo_env["BIRDSEARCH_CACHE"]).glob("toy/tiny-*") if p.is_dir()
    )  # not the .lock
    card = root / "demo" / "encoder-realistic" / "encoder" / "card.json"
    distilled_at = card.stat().st_mtime
    port = free_port()
    started = time.monotonic()
    process = demo(demo_env, "--port", str(port), start_new_session=True)
    try:
        ready = None
        while time.monotonic() - started < 60 and process.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    ready = time.monotonic() - started
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        assert ready is not None, process.stderr.read() if process.poll() is not None else "not ready in 60 s"
        assert ready < 30
        query = next((root / "audio" / "query").rglob("*.ogg"))
        with open(query, "rb") as f:
            response = httpx.post(f"http://127.0.0.1:{port}/query", files={"audio": f}, timeout=30)
        assert response.status_code == 200 and response.json()["species"]
        # The demo fitted its confidences: min_conf works, every species carries a probability.
        with open(query, "rb") as f:
            response = httpx.post(
                f"http://127.0.0.1:{port}/query", files={"audio": f}, data={"min_conf": "0.05"}, timeout=30
            )
        assert response.status_code == 200, response.text
        assert all(hit["confidence"] >= 0.05 for hit in response.json()["species"])
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    assert card.stat().st_mtime == distilled_at  # not distilled again
