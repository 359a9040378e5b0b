"""Micro-batching: rows from concurrent requests go through the model together, in one forward pass.

A request hands its rows (for the service: the windows of one recording) to ``MicroBatcher.submit``
and awaits their results. One collector task takes rows off a queue until it holds ``max_batch`` of
them or the oldest has waited ``max_wait_s``, runs the batch function on a worker thread (so the
event loop never blocks on model work), and hands each request back its own slice of the output.
While a batch runs, new rows queue up; they already waited longer than ``max_wait_s`` by the time
the worker is free, so under load batches fill up without any added wait, and at low load a lone
request waits at most ``max_wait_s``.

The class knows nothing about models: ``run`` is any function from a stacked (N, ...) array to an
(N, ...) result, which is how the tests drive its queue-and-timeout core.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

BatchFn = Callable[[np.ndarray], Any]  # (N, ...) rows -> (N, ...) array or tensor
BatchObserver = Callable[[int, int, float], None]  # (rows, requests, seconds) of each batch run
Allocator = Callable[[tuple[int, ...], np.dtype], np.ndarray]  # where a batch is stacked (e.g. pinned memory)


@dataclass
class _Pending:
    """Rows of one request (or one chunk of a large one) waiting for their results."""

    rows: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


class BatcherClosedError(RuntimeError):
    """The batcher was stopped while a request waited on it."""


class MicroBatcher:
    """Collects rows of concurrent callers into batches of at most ``max_batch`` rows."""

    def __init__(
        self,
        run: BatchFn,
        max_batch: int = 64,
        max_wait_s: float = 0.005,
        name: str = "model",
        observe: BatchObserver | None = None,
        allocate: Allocator | None = None,
        executor: ThreadPoolExecutor | None = None,
    ):
        """
        Args:
            run: the batch function, called on a worker thread with (N, ...) stacked rows, N ≤ max_batch.
            max_batch: most rows in one call of ``run``.
            max_wait_s: longest time the oldest queued row waits for more rows before its batch runs.
            name: used for the worker thread's name and in logs.
            observe: called after each batch with (rows, requests, seconds), e.g. to feed metrics.
            allocate: returns the array a batch is stacked into, given its shape and dtype (for a
                GPU: page-locked memory, so that the copy to the device is one DMA); default: a new array.
                Called on the worker thread, before ``run``; the array is not used again after it returns.
            executor: a single-thread executor to run batches on, shared with the caller's other model
                work (the engine's compute thread); default: a thread of the batcher's own.
        """
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.run = run
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_s)
        self.name = name
        self.observe = observe
        self.allocate = allocate
        self._queue: asyncio.Queue[_Pending] | None = None
        self._carry: _Pending | None = None  # a chunk that did not fit the previous batch
        self._running: list[_Pending] = []  # the batch on the worker thread now
        self._task: asyncio.Task | None = None
        self._shared_executor = executor
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the collector task on the running event loop (``submit`` also starts it)."""
        if self.running:
            return
        self._queue = asyncio.Queue()
        self._executor = self._shared_executor or ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"birdsearch-{self.name}"
        )
        self._task = asyncio.get_running_loop().create_task(
            self._collect_forever(), name=f"batcher-{self.name}"
        )

    async def stop(self) -> None:
        """Stop collecting; requests still waiting get ``BatcherClosedError``."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        waiting = self._running + ([self._carry] if self._carry else [])
        self._carry, self._running = None, []
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for pending in waiting:
            if not pending.future.done():
                pending.future.set_exception(BatcherClosedError(f"batcher {self.name!r} stopped"))
        if self._executor is not None and self._executor is not self._shared_executor:
            self._executor.shutdown(wait=False)  # a batch still on the thread finishes unobserved
            self._executor = None

    async def submit(self, rows: np.ndarray) -> Any:
        """Queue (N, ...) rows and return the batch function's (N, ...) output for them, in order."""
        if len(rows) == 0:
            raise ValueError("submit needs at least one row")
        if not self.running:
            self.start()
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        chunks = [rows[i : i + self.max_batch] for i in range(0, len(rows), self.max_batch)]
        futures = []
        for chunk in chunks:
            future = loop.create_future()
            self._queue.put_nowait(_Pending(chunk, future))
            futures.append(future)
        try:
            results = await asyncio.gather(*futures)
        except BaseException:
            for future in futures:  # a cancelled request must not leave work behind
                future.cancel()
            raise
        return results[0] if len(results) == 1 else concatenate(results)

    async def _collect_forever(self) -> None:
        while True:
            batch = await self._collect()
            batch = [p for p in batch if not p.future.done()]  # callers that gave up
            if batch:
                self._running = batch
                await self._execute(batch)
                self._running = []

    async def _collect(self) -> list[_Pending]:
        """Wait for a first chunk, then add chunks until the batch is full or the first one's wait is over."""
        assert self._queue is not None
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, size = [first], len(first.rows)
        deadline = first.enqueued + self.max_wait_s
        while size < self.max_batch:
            pending = await self._next_before(deadline)
            if pending is None:
                break
            if size + len(pending.rows) > self.max_batch:
                self._carry = pending  # it heads the next batch
                break
            batch.append(pending)
            size += len(pending.rows)
        return batch

    async def _next_before(self, deadline: float) -> _Pending | None:
        assert self._queue is not None
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), remaining)
        except TimeoutError:
            return None

    async def _execute(self, batch: list[_Pending]) -> None:
        parts = [p.rows for p in batch]
        n_rows = sum(len(part) for part in parts)
        started = time.perf_counter()
        try:
            output = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._stack_and_run, parts
            )
        except Exception as e:  # every request of the batch learns what went wrong
            log.exception("batch of %d rows failed in %s", n_rows, self.name)
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(e)
            return
        if len(output) != n_rows:
            error = RuntimeError(f"{self.name}: batch function returned {len(output)} rows for {n_rows}")
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        if self.observe is not None:
            self.observe(n_rows, len(batch), time.perf_counter() - started)
        offset = 0
        for pending in batch:
            n = len(pending.rows)
            if not pending.future.done():
                pending.future.set_result(output[offset : offset + n])
            offset += n

    def _stack_and_run(self, parts: list[np.ndarray]) -> Any:
        """On the worker thread: stack the batch (a copy of up to hundreds of MB) and run it."""
        return self.run(self._stack(parts))

    def _stack(self, parts: list[np.ndarray]) -> np.ndarray:
        """One contiguous (N, ...) array of the batch's rows (a copy, even of views): the only copy made."""
        if self.allocate is None:
            return np.concatenate(parts)
        shape = (sum(len(p) for p in parts), *parts[0].shape[1:])
        return np.concatenate(parts, out=self.allocate(shape, parts[0].dtype))


def concatenate(parts: list[Any]) -> Any:
    """Join result slices: numpy arrays with numpy, tensors with torch."""
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import torch

    return torch.cat(parts)
