"""A command whose extra is not installed stops with one line naming the extra (exit 2).

Each case runs ``detector`` in a fresh interpreter where the missing package is blocked
(``sys.modules[name] = None`` makes every ``import name`` raise ``ModuleNotFoundError``), the
way it is absent from ``pip install "detector[serve]"``; tests/deploy/test_slim_install.py
checks the real slim install.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def detector(blocked: list[str], *argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "from detector.cli import main\n"
        f"sys.exit(main({list(argv)!r}))\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


TORCH = ["torch", "torchvision"]


@pytest.mark.parametrize(
    "argv, label",
    [
        (["train", "--model", "yolox_nano", "--data", "d.yaml"], "train"),
        (["info", "yolox_s"], "info"),
        (["export", "onnx", "--weights", "w.pt", "--out", "m.onnx"], "export onnx"),
        (["data", "show", "--data", "d.yaml"], "data show"),
    ],
)
def test_training_commands_name_the_train_extra(argv, label, tmp_path):
    done = detector(TORCH, *argv, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    expected = f"error: 'detector {label}' needs PyTorch: pip install \"detector[train]\"\n"
    assert done.stderr == expected


def test_commands_without_torch_still_start():
    for argv in (["--help"], ["serve", "--help"], ["export", "engine", "--help"]):
        done = detector(TORCH, *argv)
        assert done.returncode == 0, (argv, done.stderr)


def test_engine_build_names_the_gpu_extra_for_onnx(onnx_model, tmp_path):
    done = detector(["onnx"], "export", "engine", "--onnx", str(onnx_model), "--out", "m.engine",
                    cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2, done.stderr
    expected = "error: 'detector export engine' needs onnx: pip install \"detector[gpu]\"\n"
    assert done.stderr == expected


def test_other_missing_modules_are_not_hidden(tmp_path):
    """A module outside the extras (a bug, not a missing extra) keeps its traceback."""
    done = detector(["detector.training.launch"], "train", "--model", "yolox_nano", "--data",
                    "d.yaml", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ModuleNotFoundError" in done.stderr
