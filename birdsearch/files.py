"""Writing a file whole or not at all, readable as the process's umask allows.

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask, and a rename keeps that
mode: tables written that way could be read by nobody but their writer, on a shared server too.
``write_atomic`` creates its temporary file as ``open(path, "w")`` would (0666 less the umask).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from pathlib import Path
from typing import Any

from birdsearch.errors import ConfigError


def write_atomic(path: Path, data: str | bytes, *, durable: bool = False) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file in its folder and a rename.

    A reader sees the old file or the new one, never a part of either. ``durable`` also flushes the
    file to disk before the rename and the folder after it, so that a power cut cannot undo it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """``data`` as indented JSON at ``path``, whole or not at all (``write_atomic``)."""
    write_atomic(path, json.dumps(data, indent=2, default=str))


def read_format_json(path: Path, what: str, fmt: str, version: int) -> dict[str, Any]:
    """The JSON object at ``path`` whose ``format`` is ``fmt`` and ``format_version`` ``version``.

    ConfigError naming the ``what`` (e.g. "calibration") and what is wrong: missing, not JSON, another
    kind of file, another version.
    """
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{what} file {path} is not readable JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ConfigError(f"{path} is not {article(what)} {what} file (format should be {fmt!r})")
    if data.get("format_version") != version:
        raise ConfigError(f"{path}: {what} format version {data.get('format_version')} is not {version}")
    return data


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How a full disk reads where the errno is lost: re-raised from a worker process, from SQLite.
FULL_WORDS = ("No space left on device", "Disk quota exceeded", "database or disk is full")


def disk_full(error: BaseException) -> bool:
    """Whether ``error``, or an error that caused it, says that a disk (or a quota) is full."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in FULL_ERRNOS:
            return True
        if any(words in str(seen) for words in FULL_WORDS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
