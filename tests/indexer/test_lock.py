"""The index root's writer lock after a kill: forked workers keep nothing, die with their parent, and
a refusal names the process that really holds the lock."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from birdsearch.errors import ConfigError
from birdsearch.indexer.lock import IndexLock, processes_with_open


def python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE, text=True
    )


def gone(pid: int) -> bool:
    """No such process, or only its zombie (killed, waiting for init to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# The parent takes the lock, forks a worker the way a DataLoader does (with the worker
# initialiser the indexer uses), then is killed with SIGKILL: nothing of it runs after that.
KILLED_WITH_A_WORKER = """
    import os, signal, sys, time
    from birdsearch.indexer.lock import IndexLock
    from birdsearch.workers import die_with_parent

    lock = IndexLock(sys.argv[1]).__enter__()
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        if sys.argv[2] == "dies-with-parent":
            die_with_parent(0, parent=parent)
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    os.kill(parent, signal.SIGKILL)
"""


@pytest.mark.parametrize("worker", ["dies-with-parent", "outlives-parent"])
def test_a_killed_run_frees_the_lock_at_once(tmp_path, caplog, worker):
    """Even a worker that outlives its parent does not keep the lock: it closed its copy at fork."""
    run = python(KILLED_WITH_A_WORKER, str(tmp_path), worker)
    child = int(run.stdout.readline())
    assert run.wait(timeout=30) == -signal.SIGKILL
    try:
        if worker == "dies-with-parent":
            assert wait_until(lambda: gone(child)), f"worker {child} outlived its killed parent"
        else:
            assert not gone(child)
        assert processes_with_open(tmp_path / ".lock") == []
        with caplog.at_level(logging.WARNING, logger="birdsearch.indexer.lock"), IndexLock(tmp_path):
            pass  # taken at once, not refused
        assert f"pid {run.pid} on {socket.gethostname()}" in caplog.text and "stale lock" in caplog.text
    finally:
        if not gone(child):
            os.kill(child, signal.SIGKILL)


def test_the_refusal_names_the_live_holder_not_the_dead_pid_on_record(tmp_path):
    """A lock held by a process other than the one the file names (an orphan of an older version,
    a copy of the descriptor handed on) is refused naming the process that holds it."""
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = int(ended.stdout)
    holder = python(
        """
        import fcntl, os, sys, time
        fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, sys.argv[2].encode(), 0)
        print("held", flush=True)
        time.sleep(60)
        """,
        str(tmp_path / ".lock"),
        f"pid {dead} on {socket.gethostname()}, started 2026-01-01T00:00:00+00:00",
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError) as refused, IndexLock(tmp_path):
            pass
        message = str(refused.value)
        assert f"held by pid {holder.pid} (" in message
        assert f"pid {dead} on" in message and "which has ended" in message
    finally:
        holder.kill()
        holder.wait(timeout=10)
    with IndexLock(tmp_path):  # free as soon as the holder is gone
        pass


def test_a_live_run_is_named_as_the_holder(tmp_path):
    with IndexLock(tmp_path), pytest.raises(ConfigError, match=f"held by pid {os.getpid()} "):
        IndexLock(tmp_path).__enter__()
