"""The cores a model call should take: the one compute thread, and torch's thread count for each call.

Every torch (and FAISS) computation of a worker process runs on one thread, ``ComputeThread``:
loading, batches of every model, search. libgomp counts the threads of all OpenMP teams, and once
they outnumber the cores it stops spinning between parallel regions; the audio tower's hundreds of
small regions then each wait for a sleeping thread to wake. One team keeps the audio tower near its
speed in a plain script (BENCHMARKS.md, Query service).

Each call gets the worker's cores less those that queries working elsewhere kept busy lately.
A query is *elsewhere* while it decodes its upload, waits for a decode thread, or is answered by the
event loop; it is *computing* while its windows or its search wait on or run on the compute thread.
The count of queries elsewhere jumps around: clients whose answers just came back send their next
recording at the very moment the next batch starts, and decode it in milliseconds, while a full-size
batch runs for far longer. So ``RecentLoad`` gives the count averaged over the last ``horizon_s``
(exponentially weighted in time), not the count at the instant a call starts.

Counts change on the event loop; the compute thread reads the average. A read racing an update
sees the old or the new value, either of which is fine for sizing a thread pool.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch


class RecentLoad:
    """Queries in flight and how many of them work elsewhere, averaged over the recent past."""

    def __init__(self, horizon_s: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.horizon_s = horizon_s
        self.clock = clock
        self.active = 0  # queries between entering the pipeline and their answer
        self.computing = 0  # of those, the ones queued or running on the compute thread
        self._average = 0.0  # of ``elsewhere`` up to ``_since``
        self._since = clock()

    @property
    def elsewhere(self) -> int:
        return self.active - self.computing

    def change(self, active: int = 0, computing: int = 0) -> None:
        """Add to the counts (negative to remove), folding the time spent at the old counts in first."""
        now = self.clock()
        self._average = self._decayed(now)
        self._since = now
        self.active += active
        self.computing += computing

    def average_elsewhere(self) -> float:
        """Queries working off the compute thread, averaged over about the last ``horizon_s``."""
        return self._decayed(self.clock())

    def _decayed(self, now: float) -> float:
        weight = math.exp(-max(0.0, now - self._since) / self.horizon_s)  # of the past average
        return weight * self._average + (1 - weight) * self.elsewhere


class ComputeThread:
    """The worker's one compute thread; each call on it runs with the torch threads it should have."""

    def __init__(self, cores: int, decode_threads: int, fixed_threads: int = 0):
        """
        Args:
            cores: the CPU cores this worker may keep busy (``Settings.cores_per_worker``).
            decode_threads: threads decoding uploads; at most these and the event loop compete.
            fixed_threads: torch threads for every call (``BIRDSEARCH_COMPUTE_THREADS``); 0: sized.
        """
        self.cores = cores
        self.decode_threads = decode_threads
        self.fixed_threads = fixed_threads
        self.load = RecentLoad()  # queries in flight, and how many lately worked off the compute thread
        self.executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="birdsearch-compute")

    def shutdown(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False)

    def thread_count(self) -> int:
        """Torch threads for the next model call: the fixed count, else the worker's cores less those
        that queries working elsewhere (decoding, answering) kept busy over the last seconds.

        Under load the decode threads keep cores busy; a torch thread sharing a core with them makes
        each of the model's many parallel regions wait for it (or spin against it), which cost the
        toy server a quarter of its CPU per query. Alone, a call gets every core: one clip's latency.
        """
        if self.fixed_threads:
            return self.fixed_threads
        elsewhere = max(0, round(self.load.average_elsewhere()))  # a read racing an update may dip below 0
        busy = min(elsewhere, self.decode_threads + 1)
        return max(1, self.cores - busy)

    def run_sized(self, fn: Callable[..., Any], *args: Any) -> Any:
        """On the compute thread: set torch's thread count for this call, then ``fn(*args)``."""
        threads = self.thread_count()
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return fn(*args)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the compute thread, sized, awaited without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.run_sized, fn, *args)

    def in_flight(self) -> AbstractContextManager[None]:
        """Count a query as in flight (working elsewhere until it waits on the compute thread)."""
        return self._counted(active=1)

    def waiting(self) -> AbstractContextManager[None]:
        """Count a query among those whose work is queued or running on the compute thread."""
        return self._counted(computing=1)

    @contextmanager
    def _counted(self, active: int = 0, computing: int = 0) -> Iterator[None]:
        self.load.change(active=active, computing=computing)
        try:
            yield
        finally:
            self.load.change(active=-active, computing=-computing)
