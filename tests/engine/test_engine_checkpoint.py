"""Checkpoint files: written with the permissions of any new file of the process."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from detector.engine.checkpoint import save_atomic


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_checkpoint_mode_follows_the_umask(tmp_path: Path, umask: int) -> None:
    """Not the 0600 of the temporary file: teammates on a shared disk can read best.pt."""
    old = os.umask(umask)
    try:
        path = save_atomic({"epoch": 1}, tmp_path / "best.pt")
        save_atomic({"epoch": 2}, path)  # replacing a file keeps the same rule
        plain = tmp_path / "plain"
        plain.write_text("x")  # what open() gives under this umask
    finally:
        os.umask(old)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE(plain.stat().st_mode)
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["best.pt", "plain"]
