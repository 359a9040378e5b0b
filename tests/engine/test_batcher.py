"""The micro-batcher's queue-and-timeout core, driven by plain functions instead of a model."""

import asyncio
import threading
import time

import numpy as np
import pytest

from birdsearch.engine.batcher import BatcherClosedError, MicroBatcher


class Recorder:
    """A batch function that doubles its rows and remembers every batch it was given."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.batches: list[np.ndarray] = []
        self.threads: set[str] = set()

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.batches.append(rows.copy())
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        return rows * 2


def rows(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32)[:, None].repeat(3, axis=1)


def run(coro):
    return asyncio.run(coro)


def test_lone_request_waits_at_most_max_wait_then_runs_alone():
    fn = Recorder()

    async def main():
        batcher = MicroBatcher(fn, max_batch=8, max_wait_s=0.05)
        started = time.monotonic()
        out = await batcher.submit(rows(0, 2))
        elapsed = time.monotonic() - started
        await batcher.stop()
        return out, elapsed

    out, elapsed = run(main())
    np.testing.assert_array_equal(out, rows(0, 2) * 2)
    assert [len(b) for b in fn.batches] == [2]
    assert 0.04 <= elapsed < 1.0


def test_zero_wait_runs_at_once():
    fn = Recorder()

    async def main():
        batcher = MicroBatcher(fn, max_batch=8, max_wait_s=0.0)
        started = time.monotonic()
        await batcher.submit(rows(0, 1))
        elapsed = time.monotonic() - started
        await batcher.stop()
        return elapsed

    assert run(main()) < 0.05


def test_concurrent_requests_share_batches_and_get_their_own_rows_back():
    fn = Recorder(delay_s=0.02)

    async def main():
        batcher = MicroBatcher(fn, max_batch=16, max_wait_s=0.05)
        outs = await asyncio.gather(*(batcher.submit(rows(10 * i, 3)) for i in range(20)))
        await batcher.stop()
        return outs

    outs = run(main())
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out, rows(10 * i, 3) * 2)
    sizes = [len(b) for b in fn.batches]
    assert sum(sizes) == 60
    assert max(sizes) <= 16
    assert len(sizes) <= 5  # 60 rows in chunks of 3 fill batches of 15: four or five batches, not twenty


def test_large_request_is_split_into_full_batches_and_reassembled():
    fn = Recorder()

    async def main():
        batcher = MicroBatcher(fn, max_batch=64, max_wait_s=0.01)
        out = await batcher.submit(rows(0, 150))
        await batcher.stop()
        return out

    out = run(main())
    np.testing.assert_array_equal(out, rows(0, 150) * 2)
    assert [len(b) for b in fn.batches] == [64, 64, 22]


def test_chunk_that_does_not_fit_heads_the_next_batch():
    fn = Recorder(delay_s=0.05)

    async def main():
        batcher = MicroBatcher(fn, max_batch=5, max_wait_s=0.05)
        a = asyncio.create_task(batcher.submit(rows(0, 3)))
        b = asyncio.create_task(batcher.submit(rows(100, 3)))
        c = asyncio.create_task(batcher.submit(rows(200, 2)))
        outs = await asyncio.gather(a, b, c)
        await batcher.stop()
        return outs

    a, b, c = run(main())
    np.testing.assert_array_equal(b, rows(100, 3) * 2)
    np.testing.assert_array_equal(c, rows(200, 2) * 2)
    assert [len(batch) for batch in fn.batches] == [3, 5]  # b (3) did not fit after a (3); b + c did


def test_observer_sees_rows_requests_and_time():
    seen = []

    async def main():
        batcher = MicroBatcher(
            Recorder(0.01), max_batch=8, max_wait_s=0.05, observe=lambda *a: seen.append(a)
        )
        await asyncio.gather(batcher.submit(rows(0, 2)), batcher.submit(rows(5, 3)))
        await batcher.stop()

    run(main())
    assert [(r, n) for r, n, _ in seen] == [(5, 2)]
    assert seen[0][2] >= 0.01


def test_failure_reaches_every_request_of_the_batch_and_the_batcher_goes_on():
    calls = []

    def flaky(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        if len(calls) == 1:
            raise ValueError("model exploded")
        return batch + 1

    async def main():
        batcher = MicroBatcher(flaky, max_batch=8, max_wait_s=0.05)
        first = await asyncio.gather(
            batcher.submit(rows(0, 1)), batcher.submit(rows(1, 1)), return_exceptions=True
        )
        second = await batcher.submit(rows(7, 1))
        await batcher.stop()
        return first, second

    first, second = run(main())
    assert all(isinstance(e, ValueError) and "exploded" in str(e) for e in first)
    np.testing.assert_array_equal(second, rows(7, 1) + 1)


def test_wrong_output_length_is_an_error_not_a_silent_mismatch():
    async def main():
        batcher = MicroBatcher(lambda b: b[:-1], max_batch=8, max_wait_s=0.0)
        try:
            await batcher.submit(rows(0, 2))
        finally:
            await batcher.stop()

    with pytest.raises(RuntimeError, match="returned 1 rows for 2"):
        run(main())


def test_cancelled_request_is_dropped_and_others_are_served():
    fn = Recorder(delay_s=0.1)

    async def main():
        batcher = MicroBatcher(fn, max_batch=2, max_wait_s=0.0)
        busy = asyncio.create_task(batcher.submit(rows(0, 2)))  # occupies the worker for 0.1 s
        await asyncio.sleep(0.02)
        doomed = asyncio.create_task(batcher.submit(rows(50, 2)))
        kept = asyncio.create_task(batcher.submit(rows(90, 2)))
        await asyncio.sleep(0.02)
        doomed.cancel()
        out = await kept
        await busy
        await batcher.stop()
        return out

    out = run(main())
    np.testing.assert_array_equal(out, rows(90, 2) * 2)
    assert not any((b == rows(50, 2)).all() for b in fn.batches if b.shape == (2, 3))


def test_model_work_runs_off_the_event_loop():
    fn = Recorder(delay_s=0.3)
    ticks = []

    async def ticker():
        for _ in range(10):
            ticks.append(time.monotonic())
            await asyncio.sleep(0.02)

    async def main():
        batcher = MicroBatcher(fn, max_batch=4, max_wait_s=0.0)
        await asyncio.gather(batcher.submit(rows(0, 1)), ticker())
        await batcher.stop()

    run(main())
    assert len(ticks) == 10
    assert max(np.diff(ticks)) < 0.2  # the loop kept ticking while the batch slept 0.3 s
    assert all(name.startswith("birdsearch-model") for name in fn.threads)


def test_stop_fails_waiting_requests():
    fn = Recorder(delay_s=0.2)

    async def main():
        batcher = MicroBatcher(fn, max_batch=1, max_wait_s=0.0)
        first = asyncio.create_task(batcher.submit(rows(0, 1)))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(batcher.submit(rows(1, 1)))
        await asyncio.sleep(0.01)
        await batcher.stop()
        return await asyncio.gather(first, waiting, return_exceptions=True)

    first, waiting = run(main())
    assert isinstance(waiting, BatcherClosedError)


def test_refuses_empty_submit_and_bad_batch_size():
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda b: b, max_batch=0)

    async def main():
        batcher = MicroBatcher(lambda b: b)
        try:
            await batcher.submit(np.zeros((0, 3), dtype=np.float32))
        finally:
            await batcher.stop()

    with pytest.raises(ValueError, match="at least one row"):
        run(main())


def test_batches_are_stacked_where_the_allocator_says():
    buffers = []

    def allocate(shape, dtype):
        buffers.append(np.empty(shape, dtype))
        return buffers[-1]

    seen = []

    def fn(batch):
        seen.append(batch)
        return batch + 1

    async def main():
        batcher = MicroBatcher(fn, max_batch=8, max_wait_s=0.05, allocate=allocate)
        outs = await asyncio.gather(batcher.submit(rows(0, 2)), batcher.submit(rows(10, 3)))
        await batcher.stop()
        return outs

    a, b = run(main())
    np.testing.assert_array_equal(a, rows(0, 2) + 1)
    np.testing.assert_array_equal(b, rows(10, 3) + 1)
    assert [buf.shape for buf in buffers] == [(5, 3)]
    assert seen[0] is buffers[0]
