"""``detector demo`` end to end at toy size: every step, including the real server over HTTP."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import cv2
import pytest

from detector.cli import main
from detector.cli.demo_server import ServerError, ServerProcess, detect


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The demo's output folder and its printed output (14 images, 1 epoch, 128 px)."""
    out = tmp_path_factory.mktemp("demo")
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["demo", "--out", str(out), "--images", "14", "--epochs", "1", "--imgsz",
                     "128", "--batch", "4", "--calib-images", "4", "--samples", "2", "--runs",
                     "2", "--device", "cpu", "--workers", "0", "plots=false"])  # fmt: skip
    assert code == 0, buffer.getvalue()[-3000:]
    return out, buffer.getvalue()


def _listening(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def test_demo_runs_every_step_and_summarises(demo):
    out, text = demo
    for number in range(1, 8):
        assert f"[{number}/7] done in" in text
    assert "Average Precision" in text  # the COCO table
    assert "mAP@0.5       float" in text  # the INT8 accuracy report
    metrics = json.loads((out / "metrics.json").read_text())
    summary = text[text.index("demo summary") :]
    assert f"mAP@0.5 {metrics['mAP50']:.3f}" in summary
    for row in ("torch        fp32", "onnxruntime  fp32", "onnxruntime  int8"):
        assert row in summary
    assert "TensorRT: skipped (--device cpu)" in summary
    onnx, int8 = out / "export/yolox_nano.onnx", out / "export/yolox_nano.int8.onnx"
    assert onnx.stat().st_size > 0 and int8.stat().st_size > 0
    assert str(onnx) in summary and str(int8) in summary
    assert "server stopped (cleanly on SIGTERM)" in text


def test_demo_writes_the_servers_annotated_images(demo):
    out, text = demo
    annotated = sorted((out / "served").glob("*.jpg"))
    assert len(annotated) == 2
    val = json.loads((out / "data/annotations/instances_val.json").read_text())["images"]
    for path, record in zip(annotated, val):
        image = cv2.imread(str(path))
        assert image is not None and image.shape[:2] == (record["height"], record["width"])
        assert f"{record['file_name']}: " in text  # the detections were printed per image


def test_server_is_stopped_when_a_step_fails(demo, tmp_path: Path, monkeypatch):
    out, _ = demo
    monkeypatch.setenv("DETECTOR_API_KEYS", "secret")  # the caller's settings do not leak in
    server = ServerProcess(out / "export/yolox_nano.onnx", tmp_path / "serve.log")
    with pytest.raises(RuntimeError, match="a later step failed"):
        with server:
            answer = detect(server.url, next((out / "data/images").glob("*.jpg")))
            assert answer["model"] == "yolox_nano"
            raise RuntimeError("a later step failed")
    assert server.process is not None and server.process.poll() is not None
    assert server.stopped_cleanly and not server.killed  # SIGTERM was enough
    assert not _listening(server.url)


def test_a_server_that_cannot_start_is_reported_with_its_log(tmp_path: Path):
    server = ServerProcess(tmp_path / "missing.onnx", tmp_path / "serve.log")
    with pytest.raises(ServerError, match="missing.onnx"):
        with server:
            pass
    assert server.process is not None and server.process.poll() is not None


def test_a_stale_generated_dataset_is_made_again_and_a_foreign_one_refused(tmp_path: Path):
    """An older demo's data (other settings) is regenerated; data the demo did not write stays."""
    from detector.cli.demo import _data
    from detector.data.synth import SynthSpec, make_synthetic_dataset, synth_header

    make_synthetic_dataset(tmp_path / "data", images=3, spec=SynthSpec(image_size=(64, 64)))
    path = _data(tmp_path, 4)
    assert path.read_text().splitlines()[0] + "\n" == synth_header(4, 0, SynthSpec.demo())
    assert len(list((tmp_path / "data/images").glob("*.jpg"))) == 4
    assert _data(tmp_path, 4) == path  # same settings: reused
    foreign = tmp_path / "mine"
    (foreign / "data").mkdir(parents=True)
    (foreign / "data/data.yaml").write_text("format: coco\n")
    with pytest.raises(ValueError, match="not a dataset the demo generated"):
        _data(foreign, 4)
    assert (foreign / "data/data.yaml").is_file()
