"""``birdsearch.files.write_atomic``: whole or nothing, with the mode the umask gives."""

from __future__ import annotations

import pytest

from birdsearch.files import disk_full, write_atomic


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_the_file_gets_the_mode_open_would_give(tmp_path, umask, mask, mode):
    umask(mask)
    write_atomic(tmp_path / "a.txt", "text")
    write_atomic(tmp_path / "b.bin", b"\x00\x01", durable=True)
    assert [(tmp_path / n).stat().st_mode & 0o777 for n in ("a.txt", "b.bin")] == [mode, mode]


def test_a_write_replaces_the_file_whole_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "deep" / "folder" / "table.csv"
    write_atomic(target, "é,1\n")
    write_atomic(target, "second\n", durable=True)
    assert target.read_bytes() == b"second\n"
    assert [p.name for p in target.parent.iterdir()] == ["table.csv"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary_one(tmp_path):
    target = tmp_path / "table.csv"
    write_atomic(target, "old\n")
    with pytest.raises(TypeError):
        write_atomic(target, 42)  # type: ignore[arg-type]
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_a_full_disk_is_recognised_however_it_was_raised():
    import errno
    import sqlite3

    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert disk_full(
        OSError("Caught OSError in DataLoader worker process 0.\nOSError: [Errno 28] No space left on device")
    )
    assert disk_full(sqlite3.OperationalError("database or disk is full"))
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as e:
            raise RuntimeError("writing the index failed") from e
    except RuntimeError as wrapped:
        assert disk_full(wrapped)
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))
