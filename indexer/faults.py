"""Crash points for the crash-and-resume tests: ``BIRDSEARCH_INDEX_CRASH_AT=name[:n]`` kills the process.

The indexer calls ``point(name)`` at the moments a crash would hurt most (after an embedding shard
is saved, between the files of a version, between the rename and the pointer). When the variable
names that point, the process sends itself SIGKILL on the n-th time it passes there (default
first): no ``finally`` block, no atexit handler, no flush runs, exactly as with a power cut or the
OOM killer. Unset, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "BIRDSEARCH_INDEX_CRASH_AT"
_passes: Counter[str] = Counter()


def point(name: str) -> None:
    """Die here if ``$BIRDSEARCH_INDEX_CRASH_AT`` names this point (and its pass count is reached)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target != name:
        return
    _passes[name] += 1
    if _passes[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
