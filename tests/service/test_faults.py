"""Faults that lose nothing: a disk that fills up mid-reindex, a read-only index volume, a server
killed (SIGKILL) in a storm of queries, and a server stopped (SIGTERM) with queries in flight.

The disk and the read-only volume are real: a 16 MiB tmpfs and a read-only bind mount, which need
root (CI runs as root); elsewhere those tests skip, saying why. The servers are ``birdsearch serve``
in subprocesses on loopback.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from birdsearch.cli import main as birdsearch
from birdsearch.indexer.store import IndexRoot

STORM_RECORDING = "oss_birds_10s_32k.wav"
LONG_RECORDING = "birdnet_soundscape_48k_30s.flac"  # several windows: a query that takes a while


def mount(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB filesystem (tmpfs) at ``tmp_path/disk``."""
    if os.geteuid() != 0:
        pytest.skip("a small filesystem (tmpfs) is mounted as root only; run as root to test a full disk")
    disk = tmp_path / "disk"
    disk.mkdir()
    done = mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", disk)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}), so no full disk to test")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture
def read_only(tmp_path):
    """``read_only(folder)``: a view of ``folder`` that nobody can write, root included.

    As root, a read-only bind mount (what a `:ro` volume is); otherwise the write bits removed."""
    views: list[Path] = []

    def make(folder: Path) -> Path:
        if os.geteuid() != 0:
            for path in [folder, *folder.rglob("*")]:
                path.chmod(path.stat().st_mode & ~0o222)
            return folder
        view = tmp_path / f"read-only-{len(views)}"
        view.mkdir()
        done = mount("--bind", folder, view)
        if done.returncode == 0:
            views.append(view)
            done = mount("-o", "remount,bind,ro", view)
        if done.returncode != 0:
            pytest.skip(f"cannot make a read-only bind mount here: {done.stderr.strip()}")
        return view

    yield make
    for view in views:
        subprocess.run(["umount", "-l", str(view)], check=False)


def query(app_client: httpx.AsyncClient, helpers) -> httpx.Response:
    path = helpers.audio_file(STORM_RECORDING)
    return app_client.post("/query", files={"audio": (path.name, path.read_bytes())})


def test_a_reindex_that_runs_out_of_disk_leaves_the_published_version_serving(
    small_disk, tmp_path, tiny_models, helpers, api, capsys
):
    gallery = helpers.write_gallery(tmp_path / "gallery")
    root = small_disk / "index"
    index = ["--out", str(root), "--workers", "0", "--no-progress"]
    assert (
        birdsearch(["index", "--gallery", str(gallery), "--teacher", str(tiny_models["teacher"]), *index])
        == 0
    )
    helpers.write_gallery(gallery, seed=1)  # every photo changed: a new version to embed and write
    filler = small_disk / "filler"  # the disk full to its last 48 KiB
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 48 * 1024))
    capsys.readouterr()

    async def story():
        async with api(index_root=root) as (_, client):  # the API, serving while the reindex runs
            assert (await query(client, helpers)).json()["query"]["index"]["name"] == "v0001"
            code = await asyncio.to_thread(birdsearch, ["reindex", *index])
            answer = await query(client, helpers)
            return code, answer

    code, answer = helpers.run(story())
    error = capsys.readouterr().err
    assert code == 2, error
    assert f"the disk holding {root} is full" in error and "the published version v0001 is untouched" in error
    assert answer.status_code == 200 and answer.json()["query"]["index"]["name"] == "v0001"
    assert IndexRoot(root).versions() == ["v0001"] and IndexRoot(root).current_name() == "v0001"
    IndexRoot(root).open_current().validate(deep=True)
    assert not any((root / ".staging").glob("*")), "the unpublished version's files were left behind"

    filler.unlink()  # space freed: the same command goes on
    assert birdsearch(["reindex", *index]) == 0
    assert IndexRoot(root).current_name() == "v0002"
    IndexRoot(root).open_current().validate(deep=True)


def test_a_read_only_index_volume_is_refused_by_reindex_at_start_and_served_by_the_api(
    index_root, tmp_path, helpers, api, read_only, capsys
):
    root = read_only(helpers.copy_index(index_root, tmp_path / "index"))
    capsys.readouterr()
    started = time.monotonic()
    assert birdsearch(["reindex", "--out", str(root), "--workers", "0", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert f"cannot write to the index root {root}" in error and "needs the folder writable" in error
    assert time.monotonic() - started < 10  # at start, before any photo is read

    async def served():
        async with api(index_root=root) as (_, client):  # the API's mount is read-only by design
            return await query(client, helpers)

    answer = helpers.run(served())
    assert (
        answer.status_code == 200
        and answer.json()["query"]["index"]["name"] == IndexRoot(root).current_name()
    )


def listing(folder: Path) -> list[tuple[str, int, int]]:
    return sorted(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
    )


class Storm:
    """``clients`` threads posting queries until the server stops answering; statuses and errors."""

    def __init__(self, url: str, recording: Path, clients: int = 32, each: int | None = None):
        self.url, self.audio, self.each = url, (recording.name, recording.read_bytes()), each
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]

    def client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as http:
            sent = 0
            while self.each is None or sent < self.each:
                sent += 1
                try:
                    status = http.post("/query", files={"audio": self.audio}).status_code
                except httpx.TransportError as e:
                    with self.lock:
                        self.errors.append(type(e).__name__)
                    return
                with self.lock:
                    self.statuses.append(status)

    def __enter__(self) -> Storm:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for thread in self.threads:
            thread.join(timeout=120)

    def wait_for_answers(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.statuses) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.statuses) >= count, f"only {len(self.statuses)} answers in {timeout} s"


def test_a_server_killed_in_a_storm_of_32_clients_restarts_on_the_same_version(
    index_root, tmp_path, helpers, server_env
):
    root = helpers.copy_index(index_root, tmp_path / "index")
    cache = tmp_path / "cache"
    env = server_env(root, BIRDSEARCH_CACHE=str(cache))
    before = listing(root)
    server = helpers.Server(env, log=tmp_path / "server.log").__enter__()
    try:
        served = httpx.get(f"{server.url}/version").json()["index"]
        with Storm(server.url, helpers.audio_file(STORM_RECORDING)) as storm:
            storm.wait_for_answers(8)
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=10)
        assert storm.statuses and all(status == 200 for status in storm.statuses), storm.statuses
        assert storm.errors, "no request was cut off by the kill"
    finally:
        server.__exit__()
    assert listing(root) == before, "the index root changed"
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name], "a partial file in the cache"
    with helpers.Server(env, log=tmp_path / "restarted.log") as again:
        restarted = httpx.get(f"{again.url}/version").json()["index"]
        assert (restarted["name"], restarted["count"]) == (served["name"], served["count"])
        path = helpers.audio_file(STORM_RECORDING)
        answer = httpx.post(f"{again.url}/query", files={"audio": (path.name, path.read_bytes())}, timeout=60)
        assert answer.status_code == 200 and answer.json()["query"]["index"]["name"] == served["name"]


def in_flight(url: str) -> int:
    """Queries being answered, from /metrics (less the /metrics request asking)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    line = next(line for line in text.splitlines() if line.startswith("birdsearch_requests_in_flight"))
    return int(float(line.split()[-1])) - 1


def test_sigterm_drains_the_queries_in_flight(index_root, tmp_path, helpers, server_env):
    root = helpers.copy_index(index_root, tmp_path / "index")
    server = helpers.Server(server_env(root), log=tmp_path / "server.log").__enter__()
    try:
        with Storm(server.url, helpers.audio_file(LONG_RECORDING), each=1) as storm:
            deadline, seen = time.monotonic() + 30, 0
            while seen < 32 and time.monotonic() < deadline:
                seen = in_flight(server.url)
            assert seen == 32, f"only {seen} of the 32 queries in flight at once"
            server.process.send_signal(signal.SIGTERM)
            # uvicorn drains, then raises the signal again once it is done: -SIGTERM is a clean stop
            assert server.process.wait(timeout=60) == -signal.SIGTERM
        assert storm.statuses == [200] * 32 and not storm.errors, (storm.statuses, storm.errors)
    finally:
        server.__exit__()
