"""Atomic writes: the data reaches the disk before the rename, and the rename before the next
write (the folder is fsynced after it), so a power cut cannot keep a later file and lose an
earlier one (an engine's sidecar without the engine, ``last.pt`` without ``best.pt``)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from detector.core import atomic
from detector.core.atomic import atomic_writer, fsync_directory, write_atomic


def _record(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object]]:
    """Log each fsync (of a folder: its inode, else "file") and each rename, in order."""
    events: list[tuple[str, object]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        events.append(("fsync", info.st_ino if stat.S_ISDIR(info.st_mode) else "file"))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    return events


def test_data_then_rename_then_folder_reach_the_disk(tmp_path, monkeypatch):
    events = _record(monkeypatch)
    target = tmp_path / "sub" / "m.engine"
    write_atomic(target, b"plan")
    folder = target.parent.stat().st_ino
    assert events == [("fsync", "file"), ("replace", "m.engine"), ("fsync", folder)]
    assert target.read_bytes() == b"plan"


def test_a_failed_write_leaves_the_old_file_and_syncs_nothing_more(tmp_path, monkeypatch):
    target = write_atomic(tmp_path / "m.engine.json", b"old")
    events = _record(monkeypatch)
    with pytest.raises(RuntimeError), atomic_writer(target) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert events == []  # no rename, so no folder sync either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine.json"]  # no temporary left


def test_folders_that_cannot_be_synced_are_not_an_error(tmp_path, monkeypatch):
    def refuse(fd: int) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(atomic.os, "fsync", lambda fd: None)
    target = write_atomic(tmp_path / "a.bin", b"x")
    monkeypatch.setattr(atomic.os, "fsync", refuse)
    fsync_directory(tmp_path)  # a file system without folder sync: skipped, not raised
    fsync_directory(tmp_path / "missing")  # nothing to open: skipped
    assert target.read_bytes() == b"x"
