"""A run killed (SIGKILL) mid-embedding or mid-write leaves the published version intact; the next resumes.

The kills come from ``birdsearch.indexer.faults``: the child sends itself SIGKILL at a named point.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from birdsearch.indexer.lock import IndexLock, processes_with_open
from birdsearch.indexer.pipeline import IndexConfig, run_index
from birdsearch.indexer.store import IndexRoot


def cli_env(crash_at: str | None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("BIRDSEARCH_INDEX_CRASH_AT", None)
    if crash_at:
        env["BIRDSEARCH_INDEX_CRASH_AT"] = crash_at
    return env


def cli(*args, crash_at=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "birdsearch.cli", "-q", *args],
        env=cli_env(crash_at),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def published(tmp_path, tiny_teacher_spec, synthetic_photos):
    """An index root with v0001 over 8 photos, and a gallery that has since grown by 16."""
    gallery = tmp_path / "gallery"
    synthetic_photos(gallery / "Turdus_migratorius", 8, seed=1)
    out = tmp_path / "idx"
    config = IndexConfig(
        gallery=gallery, out=out, teacher=tiny_teacher_spec, device="cpu", workers=1, progress=False
    )
    run_index(config)
    synthetic_photos(gallery / "Junco_hyemalis", 16, seed=2)
    return gallery, out, config


def run_args(gallery, out, teacher):
    return ["index", "--gallery", str(gallery), "--out", str(out), "--teacher", teacher, "--device", "cpu",
            "--workers", "1", "--batch-size", "4", "--checkpoint-every", "4", "--no-progress"]  # fmt: skip


def assert_still_v0001(out):
    root = IndexRoot(out)
    assert root.current_name() == "v0001"
    version = root.open_current()
    version.validate(deep=True)
    assert version.count == 8


def test_killed_mid_embedding_resumes_from_saved_shards(published, tiny_teacher_spec):
    gallery, out, config = published
    killed = cli(*run_args(gallery, out, tiny_teacher_spec), crash_at="embed.shard:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert_still_v0001(out)
    assert len(list((out / ".work").rglob("shard-*.npz"))) == 2
    summary = run_index(config)
    assert summary.resumed == 8 and summary.embedded == 8 and summary.version == "v0002"
    resumed = IndexRoot(out).open_current()
    assert resumed.count == 24 and not (out / ".work").exists()
    fresh_config = IndexConfig(**{**config.__dict__, "out": out.parent / "fresh"})
    run_index(fresh_config)
    fresh = IndexRoot(fresh_config.out).open_current()
    np.testing.assert_allclose(resumed.vectors(), fresh.vectors(), atol=1e-5)


@pytest.mark.parametrize(
    "point",
    [
        pytest.param("write.vectors", marks=pytest.mark.slow),
        "write.metadata",
        pytest.param("write.manifest", marks=pytest.mark.slow),
        "publish.renamed",
    ],
)
def test_killed_mid_write_leaves_the_published_version(published, tiny_teacher_spec, point):
    gallery, out, config = published
    killed = cli(*run_args(gallery, out, tiny_teacher_spec), crash_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert_still_v0001(out)
    summary = run_index(config)
    assert summary.version == "v0002" and summary.embedded == 0 and summary.resumed == 16
    assert IndexRoot(out).versions() == ["v0001", "v0002"]
    staging = out / ".staging"
    assert not staging.exists() or not any(staging.iterdir())
    IndexRoot(out).open_current().validate(deep=True)


def test_a_second_run_is_refused_while_one_holds_the_lock(published, tiny_teacher_spec):
    gallery, out, _ = published
    with IndexLock(out):
        refused = cli(*run_args(gallery, out, tiny_teacher_spec))
    assert refused.returncode == 2
    assert "another indexing run is writing to" in refused.stderr and f"pid {os.getpid()}" in refused.stderr
    assert_still_v0001(out)
    done = cli(*run_args(gallery, out, tiny_teacher_spec))  # the lock is free again
    assert done.returncode == 0, done.stderr
    assert "published v0002" in done.stdout and "added 16, removed 0" in done.stdout


def test_a_run_killed_with_its_decode_workers_running_frees_the_lock_at_once(
    published, tiny_teacher_spec, synthetic_photos
):
    """SIGKILL while two decode workers are busy: they die with it, and the next run starts at once."""
    gallery, out, _ = published
    synthetic_photos(gallery / "Sitta_carolinensis", 64, seed=3)  # enough that the workers are mid-way
    args = run_args(gallery, out, tiny_teacher_spec)
    args[args.index("--workers") + 1] = "2"
    # Waited on by pid alone: its output goes to a file, since waiting for the end of a pipe would
    # wait for every process that inherited the pipe, workers included.
    with (out.parent / "killed.log").open("w") as log:
        killed = subprocess.Popen(
            [sys.executable, "-m", "birdsearch.cli", "-q", *args],
            env=cli_env("embed.shard:1"), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert killed.wait(timeout=300) == -signal.SIGKILL, (out.parent / "killed.log").read_text()
    assert not processes_with_open(out / ".lock")
    deadline = time.monotonic() + 5  # the kernel's SIGKILL to the workers takes a moment to land
    while processes_running(str(out)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes_running(str(out)), "decode workers outlived the killed run"
    done = cli(*args)  # no wait: nothing holds the lock
    assert done.returncode == 0, done.stderr
    assert "published v0002" in done.stdout and "stale lock" in done.stderr
    assert IndexRoot(out).open_current().count == 8 + 16 + 64


def processes_running(argument: str) -> list[int]:
    """Pids of live (non-zombie) processes whose command line holds ``argument``."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if argument.encode() in words and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def test_reindex_uses_the_published_gallery_and_teacher(published):
    gallery, out, _ = published
    done = cli("reindex", "--out", str(out), "--device", "cpu", "--workers", "1", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "published v0002" in done.stdout and "added 16" in done.stdout
    assert IndexRoot(out).open_current().manifest["gallery"]["location"] == str(gallery.resolve())
