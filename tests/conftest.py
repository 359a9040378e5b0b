"""Shared fixtures: offline settings, the toy world plugged in, and the query world that the tests of
the engine, the HTTP app, ``analyze`` and the Python API share.

Never reach the Hugging Face Hub; keep caches inside the test session. The query world: tiny random
models in the publishers' formats and a real index, built by the indexer itself (``run_index`` with
a tiny random teacher) from a small gallery of drawn photos, so that the engine reads exactly what
``birdsearch index`` publishes. The distilled encoder and the student are tiny random models of the
real classes; their answers mean nothing, but they are deterministic, which is all the equality
tests need. Session fixtures build nothing until a test asks for them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path


def share_the_cores_among_workers() -> None:
    """Each pytest-xdist worker (and what it starts) gets its share of the cores for OpenMP and BLAS.

    By default every worker's torch and numpy take one thread per core: two workers on 2 cores run 4
    threads, and OpenMP's threads spin at every barrier waiting for one that is descheduled. Small
    trainings then took 10 to 20 times longer in the suite than alone (the suite: 375 s, 2-core Xeon,
    AVX2 emulated). Must run before numpy or torch is imported: both read the variable when loaded.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        from birdsearch.cpus import available_cpus

        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, available_cpus() // workers)))


share_the_cores_among_workers()

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from birdsearch.toy import plugin as toy_plugin  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `toy` model specs and data sets resolve in tests as under the console script, which registers the
# toy world at start (cheap: nothing is built until a toy spec is used).
toy_plugin.register()

# Real recordings and photos, committed with their licenses (tests/data/ATTRIBUTION.md).
REAL_FIXTURES = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def real_fixtures() -> Path:
    """tests/data: real recordings (audio/), photos (images/) and conversions of them (derived/)."""
    return REAL_FIXTURES


@pytest.fixture
def umask():
    """``umask(0o027)`` sets this process's umask for the test; the previous one comes back after."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance (2 CPUs) for every Ray test: starting and stopping one takes 3 to 4 s."""
    ray = pytest.importorskip("ray", reason="Ray Data comes with the dev and distributed extras")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


# ---- the query world -------------------------------------------------------------------------

TEST_AUDIO = Path(__file__).resolve().parent / "data" / "audio"
# Species of the test gallery: binomials the indexer's bird table knows (common names, lineage).
GALLERY_SPECIES = (
    "Turdus migratorius",
    "Turdus merula",
    "Junco hyemalis",
    "Passer domesticus",
    "Poecile atricapillus",
    "Setophaga coronata",
)
PHOTOS_PER_SPECIES = 3


def draw_photo(path: Path, seed: int) -> None:
    """A small drawn 'bird': coloured ellipses on a plain background (distinct bytes per seed)."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (96, 72), tuple(int(c) for c in rng.integers(120, 255, 3)))
    draw = ImageDraw.Draw(image)
    body = tuple(int(c) for c in rng.integers(0, 160, 3))
    x, y = int(rng.integers(10, 40)), int(rng.integers(10, 30))
    draw.ellipse((x, y, x + 40, y + 28), fill=body)
    draw.ellipse((x + 30, y - 8, x + 48, y + 10), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    image.save(path, quality=90)


def write_gallery(root: Path, species: tuple[str, ...] = GALLERY_SPECIES, seed: int = 0) -> Path:
    for s, name in enumerate(species):
        folder = root / name.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(PHOTOS_PER_SPECIES):
            draw_photo(folder / f"photo{i}.jpg", seed * 1000 + s * 10 + i)
    return root


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path | str]:
    """A tiny teacher, a tiny student and a distilled encoder made from that student."""
    import torch

    from birdsearch.model.encoder import DistilledAudioEncoder, EncoderCard, save_encoder
    from birdsearch.model.hub import weights_sha256
    from birdsearch.model.mel import FrontEndConfig
    from birdsearch.model.standins import (
        TINY_TEACHER_CFG,
        build_student,
        build_teacher,
        save_student,
        save_teacher,
        tiny_clap_config,
        train_bpe_tokenizer,
    )

    root = tmp_path_factory.mktemp("tiny-models")
    teacher_dir = save_teacher(build_teacher(TINY_TEACHER_CFG, seed=0), root / "teacher", TINY_TEACHER_CFG)
    clap = build_student(tiny_clap_config(projection_dim=32), seed=0)
    tokenizer = train_bpe_tokenizer([f"Sound of a {n}" for n in ("American Robin", "Dark-eyed Junco")], 300)
    student_dir = save_student(clap, tokenizer, root / "student")
    torch.manual_seed(1)
    encoder = DistilledAudioEncoder.from_student(clap, out_dim=TINY_TEACHER_CFG["embed_dim"])
    teacher_weights = next(p for p in teacher_dir.iterdir() if p.suffix == ".safetensors")
    card = EncoderCard(
        base_student=f"local-dir:{student_dir}",
        audio_config=clap.config.audio_config.to_dict(),
        projection_dim=int(clap.config.projection_dim),
        teacher={
            "id": f"local-dir:{teacher_dir}",
            "dim": TINY_TEACHER_CFG["embed_dim"],
            "weights_sha256": weights_sha256(teacher_weights),
        },
        text_format="taxon_com",
        templates="openai",
        front_end=FrontEndConfig().to_dict(),
    )
    encoder_dir = save_encoder(encoder, card, root / "encoder")
    return {
        "teacher": f"local-dir:{teacher_dir}",
        "student": f"local-dir:{student_dir}",
        "encoder": encoder_dir,
    }


def build_index(gallery: Path, out: Path, teacher: str) -> Path:
    """Run the indexer on ``gallery`` into the index root ``out`` (publishes a new version)."""
    from birdsearch.indexer.pipeline import IndexConfig, run_index

    run_index(IndexConfig(gallery=gallery, out=out, teacher=teacher, device="cpu", workers=0, progress=False))
    return out


@pytest.fixture(scope="session")
def index_root(tmp_path_factory, tiny_models) -> Path:
    """A published index of the test gallery (read-only for tests: copy it to change it)."""
    base = tmp_path_factory.mktemp("index")
    gallery = write_gallery(base / "gallery")
    return build_index(gallery, base / "root", str(tiny_models["teacher"]))


@pytest.fixture(scope="session")
def loaded_models(tiny_models):
    """Both query models, loaded once and shared by every in-process app."""
    from birdsearch.engine.embedders import DistilledEmbedder, StudentEmbedder
    from birdsearch.engine.lifecycle import Models

    return Models(
        DistilledEmbedder.load(str(tiny_models["encoder"]), "cpu"),
        StudentEmbedder.load(str(tiny_models["student"]), "cpu"),
    )


@pytest.fixture
def settings_for(tiny_models, index_root):
    """``settings_for(**overrides)``: service settings over the tiny models and the test index."""
    from birdsearch.service.settings import Settings

    def make(**overrides):
        values = dict(
            index_root=index_root,
            checkpoint=str(tiny_models["encoder"]),
            student=str(tiny_models["student"]),
            cascade="always",
            device="cpu",
            max_wait_ms=2.0,
            reload_interval_s=0,
            decode_threads=2,
        )
        values.update(overrides)
        return Settings(**values)

    return make


@asynccontextmanager
async def running_app(settings, models=None):
    """An app with its lifespan run, and an httpx client talking to it in-process."""
    from birdsearch.service.app import create_app

    app = create_app(settings, models)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(
            app=app, raise_app_exceptions=False
        )  # a bug answers 500, as on a server
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            yield app, client


@pytest.fixture
def api(settings_for, loaded_models):
    """``with api(**overrides) as (app, client)`` in an ``asyncio.run``-driven test."""

    def make(**overrides):
        return running_app(settings_for(**overrides), loaded_models)

    return make


def run(coro):
    return asyncio.run(coro)


def audio_file(name: str) -> Path:
    """A test recording from tests/data/audio (committed with its license: tests/data/ATTRIBUTION.md)."""
    path = TEST_AUDIO / name
    if not path.is_file():
        raise FileNotFoundError(f"test recording {name} not found in {TEST_AUDIO}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``birdsearch serve`` in a subprocess on a free loopback port, stopped by pid."""

    def __init__(self, env: dict[str, str], workers: int = 1, log: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "HF_HUB_OFFLINE": "1"}
        self.workers = workers
        self.log = log
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        command = [sys.executable, "-m", "birdsearch.cli", "-q", "serve", "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", str(self.workers)]  # fmt: skip
        out = self.log.open("wb") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log.read_text()[-3000:] if self.log else ""
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{tail}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server on {self.url} not ready after {timeout_s} s")

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def server_env(tiny_models, tmp_path):
    """Environment for ``birdsearch serve`` over the tiny models and a private copy of the index."""

    def make(index_root: Path, **extra: str) -> dict[str, str]:
        env = {
            "BIRDSEARCH_INDEX_ROOT": str(index_root),
            "BIRDSEARCH_CHECKPOINT": str(tiny_models["encoder"]),
            "BIRDSEARCH_STUDENT": str(tiny_models["student"]),
            "BIRDSEARCH_CASCADE": "always",
            "BIRDSEARCH_DEVICE": "cpu",
            "BIRDSEARCH_MAX_WAIT_MS": "5",
            "BIRDSEARCH_RELOAD_INTERVAL_S": "0.2",
            "BIRDSEARCH_ADMIN_KEY": "test-admin-key",
            "BIRDSEARCH_CACHE": str(tmp_path / "cache"),
        }
        env.update(extra)
        return env

    return make


def copy_index(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    return target


@pytest.fixture(scope="session")
def helpers():
    """The module's helpers for test files (conftest modules are not importable by name)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        run=run,
        audio_file=audio_file,
        Server=Server,
        copy_index=copy_index,
        write_gallery=write_gallery,
        build_index=build_index,
        running_app=running_app,
    )
