"""The README's first start, run as a user runs it, without containers.

Every step is taken from ``docker/compose.yaml`` with the CPU override (``compose.cpu.yaml``): each
service's command line and environment, on top of the image's ENV from the Dockerfile, with each
volume a temporary folder and each container path in the command and environment mapped onto it.
The sequence is the deployment guide's: the ``models`` job, the first ``reindex`` on an empty
``index`` volume, the ``api`` service, a query, a photo added to the gallery, ``reindex`` again, and
the API serving the new version (the hot reload Compose relies on: no admin key is set).

The site settings are what a user puts in ``docker/.env``: the toy models (``toy:tiny``, built by
the ``models`` job into the ``cache`` volume, since the real weights cannot be downloaded here) and
the gallery folder. What differs from containers: no image is built, the commands run with this
checkout's interpreter, and the API binds a free loopback port instead of the container's 8000.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import compose_tools  # noqa: E402

DOCKER = Path(__file__).resolve().parents[2] / "docker"
RECORDING = Path(__file__).resolve().parents[1] / "data" / "audio" / "oss_birds_10s_32k.wav"
# The API's port inside the container (compose maps the host's BIRDSEARCH_PUBLISH onto it).
CONTAINER_PORT = "8000"


class Host:
    """Runs Compose services as processes: named volumes and bind mounts become folders."""

    def __init__(self, root: Path, site: dict[str, str]):
        self.root = root
        self.site = site
        files = [DOCKER / "compose.yaml", DOCKER / "compose.cpu.yaml"]
        settings = {**compose_tools.dotenv(DOCKER / ".env"), **site}
        self.compose = compose_tools.interpolate(compose_tools.load(*files), settings)
        self.image_env = compose_tools.image_env(DOCKER / "Dockerfile")
        self.runs = 0

    def volume(self, name: str) -> Path:
        path = self.root / "volumes" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def mounts(self, service: dict[str, Any]) -> dict[str, tuple[Path, bool]]:
        """Container path -> (host folder, read-only) for each of the service's volumes."""
        mounts = {}
        for spec in service.get("volumes", []):
            source, target, *mode = spec.split(":")
            if source.startswith((".", "/")):
                host = (DOCKER / source).resolve()  # a bind mount, relative to the compose file
            else:
                assert source in self.compose["volumes"], f"{source} is not a declared volume"
                host = self.volume(source)
            mounts[target] = (host, mode == ["ro"])
        return mounts

    def command(self, name: str) -> tuple[list[str], dict[str, str], dict[str, tuple[Path, bool]]]:
        """The service's argv and environment, container paths mapped onto the host folders.

        A container path outside every volume lands in a fresh folder per run, as a container's own
        writable layer does (lost with ``--rm``), so nothing is shared that Compose would not share.
        """
        service = self.compose["services"][name]
        mounts = self.mounts(service)
        self.runs += 1
        layer = self.root / "layers" / f"{name}-{self.runs}"

        def on_host(value: str) -> str:
            for target, (host, _) in mounts.items():
                if value == target or value.startswith(target + "/"):
                    return str(host) + value[len(target) :]
            return str(layer) + value if value.startswith("/") else value

        # The image's interpreter and PATH are this checkout's; everything else is the image's.
        image = {k: v for k, v in self.image_env.items() if k != "PATH"}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BIRDSEARCH_", "HF_"))}
        env.update({k: on_host(str(v)) for k, v in {**image, **service.get("environment", {})}.items()})
        argv = [on_host(arg) for arg in service["command"]]
        assert argv[0] == "birdsearch", argv
        return [sys.executable, "-m", "birdsearch.cli", *argv[1:]], env, mounts

    def run_job(self, name: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """A one-shot service (`docker compose run --rm NAME`); its read-only mounts must stay untouched."""
        argv, env, mounts = self.command(name)
        read_only = {host: listing(host) for host, ro in mounts.values() if ro}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
        for host, before in read_only.items():
            assert listing(host) == before, f"{name} wrote into {host}, which Compose mounts read-only"
        return done

    def start(self, name: str, port: int) -> subprocess.Popen:
        """A long-running service, on 127.0.0.1:``port`` instead of the container's 0.0.0.0:8000."""
        argv, env, _ = self.command(name)
        argv = [
            "127.0.0.1"
            if prev == "--host"
            else str(port)
            if prev == "--port" and arg == CONTAINER_PORT
            else arg
            for prev, arg in zip(["", *argv[:-1]], argv, strict=True)
        ]
        log = (self.root / f"{name}.log").open("w")
        return subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True
        )


def listing(folder: Path) -> list[tuple[str, int, int]]:
    return sorted(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, log: Path, ready, timeout: float) -> httpx.Response:
    """GET ``url`` until ``ready(response)``; fails with the server's log if it exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited: {log.read_text()[-3000:]}"
        try:
            response = httpx.get(url, timeout=2)
            if ready(response):
                return response
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    pytest.fail(f"{url} not as expected within {timeout} s; server log: {log.read_text()[-3000:]}")


def published_version(stdout: str) -> str:
    return next(word for line in stdout.splitlines() for word in line.split() if word.startswith("v0"))


@pytest.fixture
def host(tmp_path) -> Host:
    gallery = tmp_path / "photos"  # the site's photo folder, BIRDSEARCH_GALLERY
    gallery.mkdir()
    site = {
        "BIRDSEARCH_TEACHER": "toy:tiny",
        "BIRDSEARCH_STUDENT": "toy:tiny",
        "BIRDSEARCH_GALLERY": str(gallery),
    }
    return Host(tmp_path, site)


@pytest.fixture
def toy_photos(tmp_path, monkeypatch) -> list[Path]:
    """The site's own photos: the tiny toy world's gallery, drawn apart from every volume."""
    from birdsearch.toy.world import ensure_world

    monkeypatch.setenv("BIRDSEARCH_CACHE", str(tmp_path / "photo-source"))
    world = ensure_world("tiny", stages=("gallery",), progress=False)
    return sorted(world.gallery_dir.rglob("*.jpg"))


def test_the_first_start_story(host, toy_photos):
    gallery = Path(host.site["BIRDSEARCH_GALLERY"])

    # 1. models: the provisioning job fills the volumes (the toy models build into `cache`).
    host.run_job("models")
    photos = list(toy_photos)
    held_back = photos.pop()  # added to the gallery later
    for photo in photos:
        (gallery / photo.parent.name).mkdir(exist_ok=True)
        shutil.copy(photo, gallery / photo.parent.name / photo.name)

    # 2. the first index: the reindex job on an empty index volume.
    assert not any(host.volume("index").iterdir())
    first = host.run_job("reindex")
    assert published_version(first.stdout) == "v0001", first.stdout
    assert "built in" not in first.stderr  # the models the models job provisioned, not built again
    assert (host.volume("cache") / "checksums.json").is_file()  # the teacher's, hashed once

    # 3. the API, then a query.
    port = free_port()
    api = host.start("api", port)
    log = host.root / "api.log"
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/readyz", api, log, lambda r: r.status_code == 200, timeout=90)
        query = RECORDING  # any recording a user has at hand
        with query.open("rb") as f:
            answer = httpx.post(f"{base}/query", files={"audio": f}, timeout=60)
        assert answer.status_code == 200, answer.text
        facts = answer.json()["query"]
        assert facts["index"]["name"] == "v0001" and facts["index"]["count"] == len(photos)
        assert answer.json()["species"] and facts["model"]["id"] == "toy:tiny"

        # 4. a photo added, the reindex job again, and the API serving the new version.
        (gallery / held_back.parent.name).mkdir(exist_ok=True)
        shutil.copy(held_back, gallery / held_back.parent.name / held_back.name)
        second = host.run_job("reindex")
        assert published_version(second.stdout) == "v0002", second.stdout
        served = wait_for(
            f"{base}/version",
            api,
            log,
            lambda r: (r.json().get("index") or {}).get("name") == "v0002",
            timeout=30,
        )
        assert served.json()["index"]["count"] == len(photos) + 1
        with query.open("rb") as f:
            again = httpx.post(f"{base}/query", files={"audio": f}, timeout=60)
        assert again.status_code == 200 and again.json()["query"]["index"]["name"] == "v0002"
    finally:
        os.killpg(api.pid, signal.SIGTERM)
        try:
            api.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(api.pid, signal.SIGKILL)
            api.wait(timeout=10)


@pytest.mark.slow
def test_the_distill_job_writes_an_encoder_that_the_api_serves(host, tmp_path, monkeypatch):
    """The `distill` profile on the tiny toy world's recordings, then the API on its encoder."""
    from birdsearch.toy.world import ensure_world

    monkeypatch.setenv("BIRDSEARCH_CACHE", str(tmp_path / "data-source"))
    world = ensure_world("tiny", stages=("gallery", "audio"), progress=False)
    data = tmp_path / "calls"  # the site's labelled recordings, BIRDSEARCH_DISTILL_DATA
    rows = ["path,species,split"]
    for row in world.read_manifest(world.distill_manifest):
        relative = Path(row["path"]).relative_to(world.audio_dir)
        (data / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(row["path"], data / relative)
        rows.append(f"{relative},{row['species']},{row['split']}")
    (data / "recordings.csv").write_text("\n".join(rows) + "\n")
    shutil.copy(world.taxa_csv, data / "species.csv")
    gallery = Path(host.site["BIRDSEARCH_GALLERY"])
    shutil.copytree(world.gallery_dir, gallery, dirs_exist_ok=True)
    site = {**host.site, "BIRDSEARCH_DISTILL_DATA": str(data), "BIRDSEARCH_RUN": "toy",
            "BIRDSEARCH_DISTILL_EPOCHS": "2", "BIRDSEARCH_DISTILL_BATCH": "4", "BIRDSEARCH_CHECKPOINT": "/checkpoints/toy/encoder"}  # fmt: skip
    host = Host(host.root, site)

    host.run_job("models")
    host.run_job("reindex")
    host.run_job("distill")
    assert (host.volume("checkpoints") / "toy" / "encoder" / "card.json").is_file()
    port = free_port()
    api = host.start("api", port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/readyz", api, host.root / "api.log", lambda r: r.status_code == 200, timeout=90)
        with RECORDING.open("rb") as f:
            answer = httpx.post(f"{base}/query", files={"audio": f}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["query"]["model"]["mode"] == "distilled"
    finally:
        os.killpg(api.pid, signal.SIGTERM)
        api.wait(timeout=30)
