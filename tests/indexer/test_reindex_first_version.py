"""`birdsearch reindex` on an index root with nothing published: the first version, or a clear refusal."""

import os
import subprocess
import sys

from birdsearch.indexer.store import IndexRoot


def cli(*args, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "birdsearch.cli", "-q", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_reindex_on_an_empty_root_publishes_the_first_version(tmp_path, tiny_teacher_spec, synthetic_photos):
    gallery, out = tmp_path / "gallery", tmp_path / "index"
    synthetic_photos(gallery / "Junco_hyemalis", 3, seed=1)
    out.mkdir()  # an empty volume, as Compose mounts it
    common = ["--out", str(out), "--device", "cpu", "--workers", "1", "--no-progress"]
    # No --teacher: on an empty root it comes from BIRDSEARCH_TEACHER, as the CLI documents.
    first = cli(
        "reindex", "--gallery", str(gallery), *common, env_extra={"BIRDSEARCH_TEACHER": tiny_teacher_spec}
    )
    assert first.returncode == 0, first.stderr
    assert "published v0001" in first.stdout
    version = IndexRoot(out).open_current()
    assert version.count == 3 and version.teacher["id"] == tiny_teacher_spec
    synthetic_photos(gallery / "Junco_hyemalis", 1, seed=2, size=40)  # overwrites photo 0 (new content)
    second = cli("reindex", "--gallery", str(gallery), *common)  # teacher: the published one's
    assert second.returncode == 0, second.stderr
    assert "published v0002" in second.stdout
    assert IndexRoot(out).open_current().teacher["id"] == tiny_teacher_spec


def test_reindex_on_an_empty_root_without_a_gallery_says_what_to_pass(tmp_path):
    refused = cli("reindex", "--out", str(tmp_path / "index"), "--device", "cpu")
    assert refused.returncode == 2
    assert "nothing is published" in refused.stderr and "--gallery" in refused.stderr
    assert not (tmp_path / "index").exists() or not any((tmp_path / "index").iterdir())
