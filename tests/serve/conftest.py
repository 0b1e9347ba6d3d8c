"""The serving tests' model, the shared small nano ONNX (``tests/conftest.py``) under the name
these tests use, and the live server most of them talk to."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_live import LiveServer  # noqa: E402


@pytest.fixture(scope="session")
def serve_onnx(nano_onnx: Path) -> Path:
    """nano, 3 classes, dynamic batch, 128 px; ``nano.pt`` beside it."""
    return nano_onnx


@pytest.fixture(scope="module")
def server(serve_onnx: Path, tmp_path_factory: pytest.TempPathFactory):
    """``detector serve`` on ``serve_onnx`` in a real uvicorn process on 127.0.0.1, batching
    with a 5 ms wait, its docs pages on (off by default); one per test module (modules that need
    other flags define their own)."""
    live = LiveServer(
        serve_onnx, tmp_path_factory.mktemp("live"), "--max-delay-ms", "5", "--docs", "open"
    )
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer):
    with server.client() as http:
        yield http
