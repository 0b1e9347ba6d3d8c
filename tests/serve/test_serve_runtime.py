"""The serving runtime on a real ONNX Runtime session: no torch, batching, clear errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from serve.runtime.backends.onnxruntime import OnnxModelError, OnnxRuntimeBackend, default_providers
from serve.runtime.predictor import Detections, Predictor, backend_for, load_backend


def pictures(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    shapes = [(100, 140), (128, 128), (60, 200), (150, 90)]
    return [rng.integers(0, 256, (*shapes[i % 4], 3), dtype=np.uint8) for i in range(count)]


def test_runtime_runs_without_torch(serve_onnx):
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import serve.runtime.predictor, serve.runtime.backends.onnxruntime
        from serve.runtime.metadata import read_onnx_metadata
        predictor = serve.runtime.predictor.Predictor.from_path({str(serve_onnx)!r})
        images = [np.full((90, 120, 3), 80, np.uint8), np.zeros((50, 70, 3), np.uint8)]
        dets = predictor.predict(images, conf=0.05)
        assert len(dets) == 2 and dets[0].boxes.shape[1] == 4
        assert sum(len(d.scores) for d in dets) > 0
        meta = read_onnx_metadata({str(serve_onnx)!r})
        assert meta.class_names == ("a", "b", "c") and meta.batch is None
        assert meta.model_name == "yolox_nano" and meta.input_size == (128, 128)
        assert meta.strides == (8, 16, 32) and meta.precision == "fp32" and meta.layout == "raw"
        spec = meta.preprocess
        assert (spec.input_height, spec.input_width, spec.pad_value) == (128, 128, 114)
        assert spec.channel_order == "BGR" and spec.scale == "0-255"
        assert predictor.metadata == meta and "verified" not in meta.extra
        assert "torch" not in sys.modules, "serving an ONNX model imported torch"
        print("ok", sum(len(d.scores) for d in dets))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_predict_maps_boxes_to_each_image(serve_onnx):
    predictor = Predictor.from_path(serve_onnx, providers=["CPUExecutionProvider"])
    images = pictures(4)
    together = predictor.predict(images, conf=0.2)
    alone = [predictor.predict([image], conf=0.2)[0] for image in images]
    for image, det, single in zip(images, together, alone):
        assert isinstance(det, Detections)
        assert det.boxes.dtype == np.float32 and det.classes.dtype == np.int64
        assert len(det.scores) > 0
        np.testing.assert_allclose(det.boxes, single.boxes, atol=1e-3)  # batching changes nothing
        assert (det.boxes[:, [0, 2]] <= image.shape[1]).all()
        assert (det.boxes[:, [1, 3]] <= image.shape[0]).all()
        assert (det.boxes >= 0).all()
        assert (np.diff(det.scores) <= 0).all()
    some = predictor.predict(images, conf=0.2, classes=[1], max_det=3)
    assert all(set(d.classes.tolist()) <= {1} and len(d.scores) <= 3 for d in some)
    assert predictor.predict([]) == []


def test_backend_choice(serve_onnx):
    assert default_providers()[-1] == "CPUExecutionProvider"
    backend = load_backend(serve_onnx, threads=1)
    assert isinstance(backend, OnnxRuntimeBackend) and backend.name == "onnxruntime"
    assert backend_for("m.engine") == "tensorrt" and backend_for("m.pt") == "torch"
    with pytest.raises(ValueError, match="m.bin"):
        backend_for("m.bin")
    with pytest.raises(ValueError, match="unknown backend"):
        load_backend(serve_onnx, backend="nope")


def test_bad_onnx_files_name_the_file(serve_onnx, tmp_path):
    missing = tmp_path / "missing.onnx"
    with pytest.raises(OnnxModelError, match="missing.onnx"):
        OnnxRuntimeBackend(missing)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(serve_onnx.read_bytes()[: serve_onnx.stat().st_size // 2])
    with pytest.raises(OnnxModelError, match="truncated.onnx.*(truncated or corrupt)"):
        OnnxRuntimeBackend(truncated)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00not an onnx file" * 64)
    with pytest.raises(OnnxModelError, match="corrupt.onnx"):
        OnnxRuntimeBackend(corrupt)
    import onnx

    bare = onnx.load(str(serve_onnx))
    del bare.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(bare, str(plain))
    with pytest.raises(OnnxModelError, match="plain.onnx.*no detector metadata"):
        OnnxRuntimeBackend(plain)
