"""Files we write (checkpoints, ONNX models, engines): atomic, with the permissions of any new
file of the process."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from detector.core.atomic import atomic_writer, write_atomic
from detector.training.checkpoint import save_atomic


def _save_onnx(path: Path) -> Path:
    onnx = pytest.importorskip("onnx", reason="onnx not installed (the onnx extra)")
    from export.onnx import save_atomic as save_onnx

    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    return save_onnx(onnx.helper.make_model(graph), path)


WRITERS: dict[str, Callable[[Path], Path]] = {
    "checkpoint": lambda path: save_atomic({"epoch": 1}, path),
    "onnx": _save_onnx,
    "engine bytes": lambda path: write_atomic(path, b"plan"),
}


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int, writer: str) -> None:
    """Not the 0600 of mkstemp's temporary file: teammates on a shared disk can read best.pt,
    model.onnx and model.engine."""
    old = os.umask(umask)
    try:
        path = WRITERS[writer](tmp_path / "out.bin")
        WRITERS[writer](path)  # replacing a file keeps the same rule
        plain = tmp_path / "plain"
        plain.write_text("x")  # what open() gives under this umask
    finally:
        os.umask(old)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE(plain.stat().st_mode)
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["out.bin", "plain"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = write_atomic(tmp_path / "model.onnx", b"old")
    with pytest.raises(RuntimeError), atomic_writer(path) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
