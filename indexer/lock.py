"""One writer per index root: an exclusive ``flock`` on ``ROOT/.lock``.

The kernel drops the lock when its holder dies, however it dies, so a crash never leaves a lock
held; the file keeps the holder's pid, host and start time. A holder that ended without releasing
it (killed) leaves that line behind: the next run takes the lock over and says whose it was.

A ``flock`` belongs to the open file, which a forked process shares: a decode worker forked while
the lock is held would keep it held after its parent died. So every forked child closes its copy
of the lock's descriptor at once (``os.register_at_fork``), and the workers die with their parent
(``birdsearch.workers``). Where the lock is refused, the message names the processes that
really hold it, found in ``/proc``, rather than the pid the file records.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import socket
from pathlib import Path

from birdsearch.errors import ConfigError, StorageError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
PROC = Path("/proc")

_held: set[int] = set()  # descriptors of the locks this process holds


def _close_held_in_child() -> None:
    for fd in _held:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class IndexLock:
    """``with IndexLock(root):`` holds the root's writer lock, or raises ConfigError saying who has it."""

    def __init__(self, root: Path):
        self.path = Path(root) / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> IndexLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StorageError(
                f"cannot write to the index root {self.path.parent}: {e.strerror}. Indexing writes its "
                f"versions there, so it needs the folder writable (with Compose: the reindex job mounts "
                f"the `index` volume read-write; only the API's mount is read-only)"
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            recorded = read_record(fd)
            os.close(fd)
            raise ConfigError(
                f"another indexing run is writing to {self.path.parent} ({describe_holder(self.path, recorded)}); "
                f"wait for it to finish, or stop it: the lock frees itself when that process ends"
            ) from e
        previous = read_record(fd)
        if previous:
            log.warning(
                "stale lock %s, left by a run that ended without releasing it (%s): taking it over",
                self.path,
                previous,
            )
        started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}".encode(), 0)
        self.fd = fd
        _held.add(fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            _held.discard(self.fd)
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def read_record(fd: int) -> str:
    """The holder line the lock file keeps ("pid N on HOST, started T"), or "" when none."""
    return os.pread(fd, 512, 0).decode(errors="replace").strip()


def describe_holder(path: Path, recorded: str) -> str:
    """Who holds the lock: the live processes that have the file open on this host, else the record."""
    holders = processes_with_open(path)
    if not holders:
        return recorded or "a process on another host or in another container"
    live = ", ".join(f"pid {pid} ({command_line(pid)})" for pid in holders)
    recorded_pid = recorded_local_pid(recorded)
    if recorded_pid is not None and recorded_pid not in holders and not alive(recorded_pid):
        return f"held by {live}, left behind by the run that took it ({recorded}), which has ended"
    return f"held by {live}"


def recorded_local_pid(recorded: str) -> int | None:
    """The pid in the record when it was written on this host, else None."""
    words = recorded.replace(",", "").split()
    if len(words) >= 4 and words[0] == "pid" and words[2] == "on" and words[3] == socket.gethostname():
        return int(words[1]) if words[1].isdigit() else None
    return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def processes_with_open(path: Path, proc: Path = PROC) -> list[int]:
    """Pids of the processes that have ``path`` open (those this user may look at), from /proc."""
    try:
        target = path.stat()
    except OSError:
        return []
    found = []
    for entry in proc.glob("[0-9]*"):
        try:
            descriptors = list((entry / "fd").iterdir())
        except OSError:  # gone, or another user's
            continue
        for fd in descriptors:
            try:
                st = fd.stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                found.append(int(entry.name))
                break
    return sorted(found)


def command_line(pid: int, proc: Path = PROC) -> str:
    try:
        words = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "command unknown"
    text = " ".join(w.decode(errors="replace") for w in words if w)
    return text if len(text) <= 120 else text[:117] + "..."
