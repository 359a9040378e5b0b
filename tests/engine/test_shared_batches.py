"""Shared forward passes: batches cut across recordings, vectors handed back whole and in order."""

import numpy as np
import pytest

from birdsearch.engine.shared_batches import SharedBatches


class Recorder:
    """A stand-in model: each window's vector is (its first sample, its length); calls are logged."""

    def __init__(self):
        self.sizes = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(len(batch))
        return np.stack([batch[:, 0], np.full(len(batch), batch.shape[1])], axis=1)


def windows(first: float, count: int, width: int = 4) -> np.ndarray:
    return (first + np.arange(count, dtype=np.float32))[:, None] * np.ones((1, width), np.float32)


def test_windows_of_several_recordings_share_batches_and_come_back_in_order():
    model = Recorder()
    batches = SharedBatches(model, batch_size=4, window=4)
    assert batches.add("a", [windows(0, 1)]) == []
    assert batches.add("b", [windows(10, 2)]) == []
    assert model.sizes == []  # 3 windows: not a full batch yet
    done = batches.add("c", [windows(20, 2), windows(30, 4)])  # 9 windows queued: two full batches
    assert [key for key, _ in done] == ["a", "b"]
    np.testing.assert_array_equal(done[1][1][:, 0], [10, 11])
    rest = batches.add("d", [windows(40, 1)]) + batches.flush()
    assert [key for key, _ in rest] == ["c", "d"]
    np.testing.assert_array_equal(rest[0][1][:, 0], [20, 21, 30, 31, 32, 33])
    assert model.sizes == [4, 4, 2] and batches.calls == 3


def test_every_window_goes_through_exactly_once():
    model = Recorder()
    batches = SharedBatches(model, batch_size=3, window=4)
    counts = {"a": 1, "b": 5, "c": 2, "d": 7}
    got = {}
    for n, (key, count) in enumerate(counts.items()):
        got.update(batches.add(key, [windows(100 * n, count)]))
    got.update(batches.flush())
    assert sum(model.sizes) == sum(counts.values()) and max(model.sizes) == 3
    for n, (key, count) in enumerate(counts.items()):
        np.testing.assert_array_equal(got[key][:, 0], 100 * n + np.arange(count))


def test_short_windows_are_repeat_padded_to_the_models_length():
    model = Recorder()
    batches = SharedBatches(model, batch_size=2, window=6)
    done = dict(
        batches.add("short", [windows(1, 1, width=3)]) + batches.add("full", [windows(5, 1, width=6)])
    )
    np.testing.assert_array_equal(done["short"][:, 1], [6])  # padded to the model's 6 samples
    with pytest.raises(ValueError, match="longer than the model"):
        batches.add("long", [windows(0, 2, width=8)])


def test_a_long_recording_comes_in_parts_and_completes_after_its_last():
    model = Recorder()
    batches = SharedBatches(model, batch_size=3, window=4)
    assert batches.add("long", [windows(0, 2)], last=False) == []
    done = dict(batches.add("short", [windows(50, 1)]))  # a full batch: long's two windows and short's one
    assert list(done) == ["short"]
    done.update(batches.add("long", [windows(2, 4)], last=False))
    assert "long" not in done and model.sizes == [3, 3]  # every window so far went through; more to come
    done.update(batches.add("long", [], last=True) + batches.flush())
    np.testing.assert_array_equal(done["long"][:, 0], [0, 1, 2, 3, 4, 5])
    assert sum(model.sizes) == 7


def test_a_recording_that_fails_while_read_is_discarded_and_the_others_go_on():
    model = Recorder()
    batches = SharedBatches(model, batch_size=4, window=4)
    batches.add("broken", [windows(0, 2)], last=False)
    batches.discard("broken")
    done = dict(batches.add("next", [windows(10, 2)]) + batches.flush())
    assert list(done) == ["next"] and model.sizes == [2]  # the broken recording's windows never ran
