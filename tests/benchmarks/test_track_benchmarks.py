"""The ``detector track`` benchmarks' machinery, small and real: the network-free twin of a model
run by the serving runtime, ``detector track`` timed frame by frame through its JSONL FIFO, and
live MJPEG streams over HTTP through one process and through one process per stream (the
colour-finder model, whose detections are known, so the frames are seen to arrive whole)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from colour_model import colour_finder_onnx, write_video

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str) -> ModuleType:
    """A benchmarks/ script as a module (benchmarks/ on sys.path, as when it runs)."""
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def colour_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_finder_onnx(tmp_path_factory.mktemp("colour") / "colour.onnx")


def test_null_twin_keeps_the_interface_and_outputs_zeros(colour_onnx: Path, tmp_path: Path) -> None:
    from serve.runtime.backends.onnxruntime import OnnxRuntimeBackend

    common = load("track_common")
    null = common.null_onnx(colour_onnx, tmp_path / "null.onnx")
    real, twin = OnnxRuntimeBackend(colour_onnx), OnnxRuntimeBackend(null)
    assert twin.metadata == real.metadata  # the same metadata: the runtime takes it as the model
    images = np.full((2, 3, 128, 128), 255.0, np.float32)
    images[:, 2, 10:30, 10:30] = 0.0  # something the real model finds
    out_real, out_twin = real.infer(images)["output"], twin.infer(images)["output"]
    assert out_twin.shape == out_real.shape == (2, 3, 8)  # the dynamic batch followed
    assert not out_twin.any() and out_real.any()


def test_detector_track_is_timed_per_frame(colour_onnx: Path, tmp_path: Path) -> None:
    pipeline = load("track_vs_ultralytics")
    video = write_video(tmp_path / "shapes.mp4", 30)
    run = pipeline.run_ours(video, colour_onnx, tmp_path / "out", warmup=5)
    assert run["frames"] == 30
    assert run["detections_per_frame"] == 2.0  # the red and the green square, every frame
    assert run["ms_per_frame"] > 0


@pytest.mark.parametrize("mode", ["one", "separate"])
def test_live_streams_through_track(colour_onnx: Path, tmp_path: Path, mode: str) -> None:
    """Two MJPEG streams at 10 fps for a short window: frames come back from both, with their
    detections, and no more frames are counted processed than the server sent."""
    streams = load("track_streams")
    video = write_video(tmp_path / "shapes.mp4", 20)
    args = argparse.Namespace(fps=10.0, seconds=1.5, warmup=0.5, grace=0.5, connect_timeout=60.0,
                              track_args="", cpus=None)  # fmt: skip
    run = streams.run_config(2, mode, colour_onnx, streams.stream_jpegs(video), tmp_path, args)
    assert run["streams"] == 2 and run["mode"] == mode
    assert all(rate > 0 for rate in run["per_stream_frames_per_s"])
    assert run["detections_per_frame"] == 2.0
    assert run["processed"] <= run["sent"] + 2  # a frame sent just before the window may count
    assert 0 < run["latency_ms_p50"] <= run["latency_ms_p99"]
