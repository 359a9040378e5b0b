"""Windows of many recordings through shared forward passes.

A recording of a few seconds has one window; a batch of one window leaves most of a GPU (and much
of a CPU's vector units) idle. ``SharedBatches`` takes each recording's windows as they are
decoded, cuts full batches across recording boundaries, runs them, and hands a recording's vectors
back, in window order, as soon as its last window has been through the model.
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
    total: int  # windows in all
    outputs: list[np.ndarray] = field(default_factory=list)  # (m_j, D) vectors, in order
    done: int = 0  # windows whose vectors are in ``outputs``


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
        self.calls = 0  # forward passes run

    def add(self, key: Hashable, parts: list[np.ndarray]) -> list[tuple[Hashable, np.ndarray]]:
        """Queue a recording's windows; run every full batch; return the recordings now complete."""
        total = sum(len(p) for p in parts)
        if total == 0:
            raise ValueError(f"recording {key!r} has no windows")
        self.queue.append(Pending(key, deque(p for p in parts if len(p)), total))
        self.queued += total
        completed = []
        while self.queued >= self.batch_size:
            completed += self.run_one()
        return completed

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
        finished = [p for p in self.waiting if p.done == p.total]
        self.waiting = [p for p in self.waiting if p.done < p.total]
        return [(p.key, np.concatenate(p.outputs)) for p in finished]

    def stack(self, rows: list[np.ndarray]) -> np.ndarray:
        """The batch as one (B, window) float32 array (a copy); short rows repeat-padded as CLAP does."""
        from birdsearch.model.audio import repeat_pad

        width = max(r.shape[1] for r in rows)
        if all(r.shape[1] == self.window for r in rows):
            return np.concatenate(rows).astype(np.float32, copy=False)
        if width > self.window:
            raise ValueError(f"windows of {width} samples are longer than the model's {self.window}")
        return np.stack([repeat_pad(row, self.window) for r in rows for row in r]).astype(np.float32, copy=False)
