"""Files written so that a kill at any moment leaves a usable file behind (torch-free).

The data goes to a temporary file in the destination's folder, is flushed to disk, then renamed
over the destination (``os.replace`` is atomic on POSIX): a reader sees the previous file or the
new one, never half of one. The folder is then flushed too (``fsync`` of the directory), so that
after a power cut the rename itself is not lost: a file written after this one (an engine's
sidecar after the engine, ``last.pt`` after ``best.pt``) is never on disk while this one is
not. The file gets the permissions any new file of this process gets
(``0o666`` less the umask: ``0644`` normally), not the ``0600`` that ``mkstemp`` gives, so
teammates on a shared disk can read checkpoints, ONNX models and engines alike. Checkpoints,
exported ONNX files and TensorRT engines are all written through :func:`atomic_writer`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def current_umask() -> int:
    """This process's umask: from ``/proc/self/status`` where there is one, else by setting it
    and putting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_directory(path: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be
    opened or synced (Windows, some network file systems)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # EINVAL/ENOTSUP: this file system does not sync folders
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """A binary handle whose content replaces ``path`` only when the ``with`` block ends
    without an exception; on an exception (or a kill) ``path`` is untouched and the temporary
    file is removed (or, after a kill, left as a hidden ``.NAME.*.tmp`` beside it). The data is
    fsynced before the rename and the folder after it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def write_atomic(path: str | Path, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`); returns the path."""
    with atomic_writer(path) as handle:
        handle.write(data)
    return Path(path)
