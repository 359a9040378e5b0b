"""How many queries have lately been working off the compute thread: the cores a model call should leave.

A query is *elsewhere* while it decodes its upload, waits for a decode thread, or is answered by the
event loop; it is *computing* while its windows or its search wait on or run on the compute thread.
The count of queries elsewhere jumps around: clients whose answers just came back send their next
recording at the very moment the next batch starts, and decode it in 10 ms, while a full-size
batch runs for hundreds. So the runtime asks for the count averaged over the last ``horizon_s``
(exponentially weighted in time), not for the count at the instant a call starts.

Counts change on the event loop; the compute thread reads the average. A read racing an update
sees the old or the new value, either of which is fine for sizing a thread pool.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


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
