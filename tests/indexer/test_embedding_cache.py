"""The embedding run's saved shards: vectors on disk, gathered by content hash, older shards still read."""

import numpy as np

from birdsearch.indexer.embed import EmbeddingCache, StoredVectors


def test_vectors_are_gathered_from_shard_files_in_any_order(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    cache = EmbeddingCache(tmp_path, dim=8, checkpoint_every=3)
    vectors = rng.standard_normal((10, 8)).astype(np.float32)
    hashes = [f"h{i}" for i in range(10)]
    for i in range(0, 10, 2):  # batches of 2, shards of 3 or more
        cache.add(hashes[i : i + 2], vectors[i : i + 2], [(i, i + 1)] * 2)
    cache.flush()
    assert len(list(tmp_path.glob("shard-*.vectors.npy"))) == len(list(tmp_path.glob("shard-*.npz"))) == 3
    monkeypatch.setattr(StoredVectors, "OPEN_SHARDS", 1)  # every switch of shard reopens one
    stored, sizes = cache.load()
    order = [9, 0, 5, 5, 3, 8, 1]
    np.testing.assert_array_equal(stored.gather([hashes[i] for i in order]), vectors[order])
    assert len(stored) == 10 and "h4" in stored and "h10" not in stored
    assert sizes["h6"] == (6, 7)


def test_a_shard_from_before_vectors_had_their_own_file_is_still_read(tmp_path):
    vectors = np.eye(4, dtype=np.float32)
    np.savez(tmp_path / "shard-000000-1.npz", hashes=np.array(["a", "b", "c", "d"]),
             vectors=vectors, sizes=np.ones((4, 2), np.int64))  # fmt: skip
    cache = EmbeddingCache(tmp_path, dim=4)
    cache.add(["e"], np.full((1, 4), 2.0, np.float32), [(3, 3)])
    cache.flush()
    stored, _ = cache.load()
    np.testing.assert_array_equal(stored.gather(["e", "b"]), [[2, 2, 2, 2], [0, 1, 0, 0]])


def test_a_shard_of_another_width_or_a_half_written_one_is_ignored(tmp_path):
    other = EmbeddingCache(tmp_path, dim=3)
    other.add(["x"], np.ones((1, 3), np.float32), [(1, 1)])
    other.flush()
    (tmp_path / "shard-000009-1.npz").write_bytes(b"not a zip")
    stored, sizes = EmbeddingCache(tmp_path, dim=4).load()
    assert len(stored) == 0 and not sizes
