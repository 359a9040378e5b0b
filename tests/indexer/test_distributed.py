"""The Ray Data embedding stage on a local Ray instance builds the index the local run builds."""

import numpy as np

from birdsearch.indexer.pipeline import IndexConfig, run_index
from birdsearch.indexer.store import IndexRoot


def test_ray_equals_local(real_gallery, tmp_path, tiny_teacher_spec, local_ray):
    base = {"gallery": real_gallery, "teacher": tiny_teacher_spec, "device": "cpu", "progress": False}
    local = run_index(IndexConfig(out=tmp_path / "local", workers=1, batch_size=4, **base))
    distributed = run_index(
        IndexConfig(out=tmp_path / "ray", runner="ray", ray_actors=2, batch_size=4, **base)
    )
    assert distributed.embedded == local.embedded == 17
    assert sorted(distributed.failed) == sorted(local.failed)
    a = IndexRoot(tmp_path / "local").open_current()
    b = IndexRoot(tmp_path / "ray").open_current()
    assert a.manifest["source_hash"] == b.manifest["source_hash"]
    assert a.images(np.arange(a.count)) != [] and [
        (r.key, r.content_hash, r.width, r.height, r.species) for r in a.images(np.arange(a.count))
    ] == [(r.key, r.content_hash, r.width, r.height, r.species) for r in b.images(np.arange(b.count))]
    np.testing.assert_allclose(a.vectors(), b.vectors(), atol=1e-5)
    np.testing.assert_array_equal(a.search(a.vectors(), 5)[1], b.search(a.vectors(), 5)[1])
