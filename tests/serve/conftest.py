"""The serving tests' model: the shared small nano ONNX (``tests/conftest.py``), under the name
these tests use."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def serve_onnx(nano_onnx: Path) -> Path:
    """nano, 3 classes, dynamic batch, 128 px; ``nano.pt`` beside it."""
    return nano_onnx
