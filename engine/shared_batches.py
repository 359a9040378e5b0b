"""Windows of many recordings through shared forward passes.

A recording of a few seconds has one window; a batch of one window leaves most of a GPU (and much
of a CPU's vector units) idle. ``SharedBatches`` takes each recording's windows as they are
decoded, cuts full batches across recording boundaries, runs them, and hands a recording's vectors
back, in window order, as soon as its last window has been through the model. A long recording's
windows may come in several parts (``last=False`` until the last), so that it never has to be
held whole.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)  # compared by identity: it holds arrays
class Pending:
    """One recording's windows on their way through the model."""

    key: Hashable
    parts: deque[np.ndarray]  # (n_i, W) arrays not yet batched, in order
    total: int  # windows given so far
    outputs: list[np.ndarray] = field(default_factory=list)  # (m_j, D) vectors, in order
    done: int = 0  # windows whose vectors are in ``outputs``
    closed: bool = True  # its last part is in: it completes when every window is done


class SharedBatches:
    """Cuts batches of ``batch_size`` windows across recordings and runs ``embed`` on them."""

    def __init__(self, embed: Callable[[np.ndarray], np.ndarray], batch_size: int, window: int):
        """
        Args:
            embed: (B, window) float32 windows to (B, D) vectors.
            batch_size: windows per call (the last call of a run may have fewer).
            window: samples per window the model takes; shorter rows are repeat-padded to it.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.embed = embed
        self.batch_size = batch_size
        self.window = window
        self.queue: deque[Pending] = deque()  # recordings with windows not yet batched
        self.waiting: list[Pending] = []  # recordings batched in part or whole, vectors incomplete
        self.queued = 0  # windows in ``queue`` not yet batched
        self.open: dict[Hashable, Pending] = {}  # recordings with more parts to come
        self.calls = 0  # forward passes run

    def add(
        self, key: Hashable, parts: list[np.ndarray], last: bool = True
    ) -> list[tuple[Hashable, np.ndarray]]:
        """Queue windows of a recording; run every full batch; return the recordings now complete.

        ``last=False`` says more of this recording's windows will come (``add`` again with the same
        key); a recording completes once its last part has been added and been through the model.
        """
        count = sum(len(p) for p in parts)
        if last and count == 0 and key not in self.open:
            raise ValueError(f"recording {key!r} has no windows")
        pending = self.open.pop(key, None) or Pending(key, deque(), 0)
        pending.parts.extend(p for p in parts if len(p))
        pending.total += count
        pending.closed = last
        if not last:
            self.open[key] = pending
        if pending.parts and pending not in self.queue:  # new, or all its earlier windows were batched
            self.queue.append(pending)
        self.queued += count
        completed = self.complete() if last else []
        while self.queued >= self.batch_size:
            completed += self.run_one()
        return completed

    def discard(self, key: Hashable) -> None:
        """Forget a recording whose reading failed: its queued windows are not run, its vectors dropped."""
        pending = self.open.pop(key, None)
        if pending is None:
            return
        if pending in self.queue:
            self.queue.remove(pending)
            self.queued -= sum(len(p) for p in pending.parts)
        if pending in self.waiting:
            self.waiting.remove(pending)

    def flush(self) -> list[tuple[Hashable, np.ndarray]]:
        """Run what is left (a last, smaller batch); return the recordings it completes."""
        completed = []
        while self.queued:
            completed += self.run_one()
        return completed

    def run_one(self) -> list[tuple[Hashable, np.ndarray]]:
        rows, owners = [], []  # owners: (pending, count) in batch order
        need = self.batch_size
        while need and self.queue:
            pending = self.queue[0]
            part = pending.parts[0]
            take = part[:need]
            rows.append(take)
            owners.append((pending, len(take)))
            need -= len(take)
            if len(take) == len(part):
                pending.parts.popleft()
            else:
                pending.parts[0] = part[len(take) :]
            if not pending.parts:
                self.queue.popleft()
            if pending not in self.waiting:
                self.waiting.append(pending)
        batch = self.stack(rows)
        self.queued -= len(batch)
        vectors = self.embed(batch)
        self.calls += 1
        start = 0
        for pending, count in owners:
            pending.outputs.append(vectors[start : start + count])
            pending.done += count
            start += count
        return self.complete()

    def complete(self) -> list[tuple[Hashable, np.ndarray]]:
        """The recordings whose last part is in and whose every window has been through the model."""
        finished = [p for p in self.waiting if p.closed and p.done == p.total]
        self.waiting = [p for p in self.waiting if p not in finished]
        return [(p.key, np.concatenate(p.outputs)) for p in finished]

    def stack(self, rows: list[np.ndarray]) -> np.ndarray:
        """The batch as one (B, window) float32 array (a copy); short rows repeat-padded as CLAP does."""
        from birdsearch.model.audio import repeat_pad

        width = max(r.shape[1] for r in rows)
        if all(r.shape[1] == self.window for r in rows):
            return np.concatenate(rows).astype(np.float32, copy=False)
        if width > self.window:
            raise ValueError(f"windows of {width} samples are longer than the model's {self.window}")
        return np.stack([repeat_pad(row, self.window) for r in rows for row in r]).astype(
            np.float32, copy=False
        )
