"""Side-by-side work for building a toy world: how many cores are free, and an ordered map over processes.

Every photo and recording is drawn from its own seeded generator, so that which process draws it
changes nothing in its bytes; the map only spreads the drawing and encoding over the idle cores.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from birdsearch.cpus import available_cpus
from birdsearch.workers import die_with_parent

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# Below this many items per worker a process pool costs more to start (spawn, imports) than it saves.
MIN_ITEMS_PER_WORKER = 16


def idle_cores() -> int:
    """The cores this process may use minus those other processes keep busy now (at least 1).

    On a busy machine a worker per core is slower than fewer: the workers take turns with the
    other processes' threads, so the busy cores are counted out.
    """
    cores = available_cpus()
    busy = int(round(os.getloadavg()[0])) if hasattr(os, "getloadavg") else 0
    return max(1, cores - busy)


def ordered_map(
    function: Callable[[T], R], items: Sequence[T], workers: int, min_items: int = MIN_ITEMS_PER_WORKER
) -> Iterator[R]:
    """``function`` over ``items`` in order, in ``workers`` processes when there are enough items.

    ``min_items``: items per process below which fewer processes are started (1 for long items).
    ``function`` must be a module-level function (it is pickled by name). The processes are spawned,
    not forked: the parent may hold torch's thread pools, which a fork would copy half-initialised.
    """
    workers = min(workers, len(items) // min_items)
    if workers <= 1:
        yield from map(function, items)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    log.info("toy world: %d items over %d processes", len(items), workers)
    chunk = max(1, len(items) // (workers * 8))
    context = multiprocessing.get_context("spawn")
    dies_with_us = functools.partial(die_with_parent, parent=os.getpid())
    with ProcessPoolExecutor(workers, mp_context=context, initializer=dies_with_us) as pool:
        yield from pool.map(function, items, chunksize=chunk)


def call(job: tuple[Callable[..., R], tuple[Any, ...]]) -> R:
    """``function(*args)`` for a ``(function, args)`` pair: lets ``ordered_map`` carry arguments."""
    function, args = job
    return function(*args)
