"""Worker processes that end with the process that started them, however it ends.

A worker forked by a DataLoader or a process pool outlives its parent when the parent is killed
with SIGKILL (or the OOM killer): nothing in the parent runs to stop it, and the orphan keeps
whatever it inherited (open files, an index root's lock, memory) until it notices on its own.
``die_with_parent`` asks the kernel instead (``prctl(PR_SET_PDEATHSIG, SIGKILL)``): when the
parent thread exits, the worker is killed at once.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(_worker_id: int = 0, *, parent: int) -> None:
    """Have this process killed when ``parent`` (the pid that started it) dies.

    For a DataLoader's ``worker_init_fn`` or a pool's ``initializer``, bound to the parent's pid
    with ``functools.partial(die_with_parent, parent=os.getpid())``. The kernel signals on the
    death of the thread that forked this process, so the parent must start its workers from a
    thread that lives as long as they do (the main thread, or the one iterating the loader).
    Linux only; elsewhere a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}")
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
