"""One writer per index root: an exclusive ``flock`` on ``ROOT/.lock``.

The kernel drops the lock when its holder dies, however it dies, so a crash never leaves a stale
lock behind; the file keeps the holder's pid, host and start time for the refusal message.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import socket
from pathlib import Path

from birdsearch.errors import ConfigError

LOCK_FILE = ".lock"


class IndexLock:
    """``with IndexLock(root):`` holds the root's writer lock, or raises ConfigError saying who has it."""

    def __init__(self, root: Path):
        self.path = Path(root) / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> IndexLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(
                f"another indexing run is writing to {self.path.parent} ({holder}); wait for it to finish, "
                f"or stop it: the lock frees itself when that process ends"
            ) from e
        started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
