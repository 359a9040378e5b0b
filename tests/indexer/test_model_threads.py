"""Torch's threads while indexing on a CPU: the model leaves the decoding workers the cores they need."""

from __future__ import annotations

import pytest
import torch

from birdsearch.errors import ConfigError
from birdsearch.indexer.embed import ModelThreads
from birdsearch.indexer.pipeline import IndexConfig, run_index


@pytest.fixture(autouse=True)
def threads_kept():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def sized(workers: int, cores: int, decode_s: float, model_s: float, batches: int = 10) -> int:
    """The thread count after ``batches`` batches costing these CPU seconds each (the model's wall
    time is its CPU time over the threads it was given: perfect scaling)."""
    sizer = ModelThreads(workers, cores=cores)
    for _ in range(batches):
        sizer.observe(decode_s, model_s / torch.get_num_threads())
    return sizer.threads()


def test_a_small_teacher_leaves_the_workers_their_cores():
    # The bench's small ViT on 2 cores: ~7 ms of decoding, resizing and thumbnail per photo in the
    # workers against ~3 ms of model: the model gets one core, and torch is set to it.
    assert sized(workers=2, cores=2, decode_s=0.22, model_s=0.05) == 1
    assert torch.get_num_threads() == 1


def test_a_full_size_teacher_keeps_every_core():
    assert sized(workers=2, cores=2, decode_s=0.3, model_s=50.0) == 2
    assert sized(workers=16, cores=16, decode_s=0.3, model_s=50.0) == 16


def test_the_share_follows_the_costs_and_the_workers_cap_it():
    assert sized(workers=16, cores=16, decode_s=1.0, model_s=1.0) == 8  # half the CPU time decodes
    assert sized(workers=1, cores=8, decode_s=10.0, model_s=0.01) == 7  # one worker needs one core
    assert sized(workers=8, cores=8, decode_s=10.0, model_s=0.001) == 1  # never fewer than one


def test_indexing_puts_torch_threads_back(tmp_path, tiny_teacher_spec, synthetic_photos):
    gallery = tmp_path / "gallery"
    synthetic_photos(gallery / "Turdus_migratorius", 40, seed=1)
    torch.set_num_threads(2)
    summary = run_index(
        IndexConfig(gallery=gallery, out=tmp_path / "idx", teacher=tiny_teacher_spec, device="cpu",
                    batch_size=8, workers=2, progress=False)
    )  # fmt: skip
    assert summary.count == 40
    assert torch.get_num_threads() == 2


def test_model_threads_pins_the_count(tmp_path, tiny_teacher_spec, synthetic_photos, monkeypatch):
    from birdsearch.indexer.embed import ImageEmbedder

    seen = []
    embed_batch = ImageEmbedder.embed_batch

    def spy(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return embed_batch(self, *args, **kwargs)

    monkeypatch.setattr(ImageEmbedder, "embed_batch", spy)
    synthetic_photos(tmp_path / "gallery" / "Turdus_migratorius", 24, seed=2)
    torch.set_num_threads(2)
    run_index(
        IndexConfig(gallery=tmp_path / "gallery", out=tmp_path / "idx", teacher=tiny_teacher_spec,
                    device="cpu", batch_size=8, workers=2, model_threads=3, progress=False)
    )  # fmt: skip
    assert seen == [3, 3, 3]
    assert torch.get_num_threads() == 2


def test_a_negative_thread_count_is_refused(tmp_path, tiny_teacher_spec):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "birdsearch.cli", "index", "--gallery", str(tmp_path), "--out",
         str(tmp_path / "idx"), "--teacher", tiny_teacher_spec, "--model-threads", "-1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode != 0 and "--model-threads) must be 0" in r.stderr
    with pytest.raises(ConfigError, match="model_threads"):
        run_index(
            IndexConfig(gallery=tmp_path, out=tmp_path / "idx", teacher=tiny_teacher_spec, model_threads=-2)
        )
