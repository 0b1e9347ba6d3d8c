"""The deployment tests' model: the shared small nano ONNX (``tests/conftest.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def onnx_model(nano_onnx: Path) -> Path:
    """nano, 3 classes, 128 px, dynamic batch, exported with this environment's PyTorch."""
    return nano_onnx
