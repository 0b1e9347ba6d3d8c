"""The PyTorch backend: a checkpoint serves the same detections as its ONNX export, through the
runtime and the app; clear errors; serve stays torch-free until a checkpoint is asked for. CUDA
paths (float16, CUDA graphs) run only where torch sees a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from serve.app import create_app
from serve.runtime.backends.torch import (
    TorchBackend,
    TorchDeviceError,
    TorchModelError,
    resolve_device,
)
from serve.runtime.predictor import Detections, Predictor, load_backend
from serve.settings import ServeSettings

sys.path.insert(0, str(Path(__file__).parent))
from serve_live import encode  # noqa: E402

CUDA_SKIP = "torch.cuda.is_available() is False: no CUDA GPU on this machine"
CONF, IOU = 0.2, 0.45


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on the shared 2-core machine two threads beside other work are many
    times slower (benchmarks/cpu_defaults.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(serve_onnx: Path) -> Path:
    """The checkpoint ``serve_onnx`` was exported from (the fixture saves it beside it)."""
    path = serve_onnx.with_name("nano.pt")
    assert path.is_file(), f"serve_onnx fixture no longer writes {path}"
    return path


def pictures() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    shapes = [(100, 140), (128, 128), (60, 200)]
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for shape in shapes]


def assert_same_detections(ours, theirs, atol: float) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert len(a.scores) == len(b.scores) and len(a.scores) > 0
        assert a.classes.tolist() == b.classes.tolist()
        np.testing.assert_allclose(a.boxes, b.boxes, atol=atol)
        np.testing.assert_allclose(a.scores, b.scores, atol=atol / 100)


def test_checkpoint_gives_the_detections_of_its_onnx_export(checkpoint, serve_onnx):
    torch_predictor = Predictor.from_path(checkpoint, device="cpu")
    onnx_predictor = Predictor.from_path(serve_onnx, providers=["CPUExecutionProvider"])
    backend = torch_predictor.backend
    assert isinstance(backend, TorchBackend) and backend.name == "torch"
    meta = torch_predictor.metadata
    assert meta.class_names == onnx_predictor.metadata.class_names == ("a", "b", "c")
    assert meta.input_size == onnx_predictor.metadata.input_size == (128, 128)
    assert (meta.layout, meta.precision, meta.batch) == ("raw", "fp32", None)
    assert meta.model_name == "yolox_nano" and meta.preprocess == onnx_predictor.metadata.preprocess
    images = pictures()
    assert_same_detections(
        torch_predictor.predict(images, CONF, IOU), onnx_predictor.predict(images, CONF, IOU), 1e-3
    )
    # any batch size, one output layout
    out = torch_predictor.run(torch_predictor.prepare(images)[0])["output"]
    assert out.shape == (3, 336, 8) and out.dtype == np.float32
    torch_predictor.close()


def test_output_equals_the_unfused_model(checkpoint):
    from detector.models import model_from_checkpoint

    model, _ = model_from_checkpoint(checkpoint)
    batch = np.random.default_rng(2).uniform(0, 255, (2, 3, 128, 128)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    for channels_last in (False, True):
        backend = TorchBackend(checkpoint, device="cpu", channels_last=channels_last)
        np.testing.assert_allclose(backend.infer(batch)["output"], expected, atol=2e-3, rtol=1e-4)


def test_imgsz_override_and_official_name(checkpoint):
    backend = load_backend(checkpoint, device="cpu", imgsz=(96, 160), model_name="yolox_nano")
    assert backend.metadata.input_size == (96, 160)
    out = backend.infer(np.zeros((1, 3, 96, 160), np.float32))["output"]
    assert out.shape == (1, (12 * 20 + 6 * 10 + 3 * 5), 8)
    with pytest.raises(TorchModelError, match="multiples of 32"):
        TorchBackend(checkpoint, device="cpu", imgsz=100)
    with pytest.raises(TorchModelError, match="yolox_nano, not yolox_s"):
        TorchBackend(checkpoint, device="cpu", model_name="yolox_s")


def test_clear_errors(tmp_path, checkpoint):
    with pytest.raises(TorchModelError, match="missing.pt: no such checkpoint"):
        TorchBackend(tmp_path / "missing.pt")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(checkpoint.read_bytes()[:5000])
    with pytest.raises(TorchModelError, match="broken.pt: truncated or corrupt"):
        Predictor.from_path(broken)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pth"):
        Predictor.from_path(text)
    with pytest.raises(TorchDeviceError, match="unknown device"):
        resolve_device("tpu:0")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        TorchBackend(checkpoint, device="cpu").infer(np.zeros((3, 128, 128), np.float32))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_without_a_gpu_says_so(checkpoint):
    with pytest.raises(TorchDeviceError, match="no CUDA GPU"):
        TorchBackend(checkpoint, device="cuda")
    with pytest.raises(TorchDeviceError, match="cuda_graphs needs a CUDA device"):
        TorchBackend(checkpoint, cuda_graphs=True)
    assert resolve_device("auto").type == "cpu"
    assert resolve_device(0).type == "cpu"  # the server's GPU index falls back to the CPU


def test_app_serves_a_checkpoint(checkpoint, serve_onnx):
    image = pictures()[0]
    expected = Predictor.from_path(serve_onnx, providers=["CPUExecutionProvider"]).predict(
        [image], CONF, IOU
    )[0]
    settings = ServeSettings(model=checkpoint, threads=1, max_batch=2)
    with TestClient(create_app(settings)) as client:
        models = client.get("/v1/models").json()["models"][0]
        assert models["backend"] == "torch" and models["precision"] == "fp32"
        assert models["class_names"] == ["a", "b", "c"] and models["input_size"] == [128, 128]
        response = client.post(
            "/v1/detect",
            files={"image": ("a.png", encode(image))},
            params={"conf": CONF, "iou": IOU},
        )
        assert response.status_code == 200, response.text
        detections = response.json()["detections"]
    assert [d["class_id"] for d in detections] == expected.classes.tolist()
    # the JSON rounds boxes to 2 decimals
    np.testing.assert_allclose([d["box"] for d in detections], expected.boxes, atol=6e-3)


def test_serve_modules_import_no_torch():
    code = (
        "import sys, serve.runtime.predictor, serve.app, serve.runtime.bench\n"
        "assert 'torch' not in sys.modules, 'serve imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with ``boxes [K, 4]``."""
    low, high = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    area = lambda b: np.prod(b[..., 2:] - b[..., :2], axis=-1)  # noqa: E731
    return inter / (area(box) + area(boxes) - inter + 1e-9)


def assert_matched(ours, theirs, score_atol: float, margin: float = 0.05) -> None:
    """Reduced precision moves scores by up to ``score_atol``: near-equal overlapping boxes may
    then swap which one NMS keeps, so a detection is not required on the other side, but it
    must be explained there: a detection of its class that overlaps it by at least the NMS IoU
    and scores at least as high (within ``score_atol``), i.e. one that would have suppressed
    it (or the same box within 0.5 px). Checked both ways for detections scoring ``margin``
    above the threshold. (Boxes are compared to the pixel on the raw outputs.)"""
    for a, b in ((ours, theirs), (theirs, ours)):
        for first, second in zip(a, b):
            for box, score, label in zip(first.boxes, first.scores, first.classes):
                if score < CONF + margin:
                    continue
                same = second.classes == label
                others = second.boxes[same]
                # the corners test covers boxes clipped to zero area at the image border
                overlap = (iou(box, others) >= IOU - 1e-3) | (np.abs(others - box).max(1) <= 0.5)
                explained = overlap & (second.scores[same] >= score - score_atol)
                assert explained.any(), f"class {label} box {box} score {score:.3f} has no match"


def test_half_precision_on_the_cpu(checkpoint):
    """The float16 path (the CUDA default), run where it can be here: close to float32."""
    images = pictures()
    reference = Predictor.from_path(checkpoint, device="cpu").predict(images, CONF, IOU)
    half = Predictor.from_path(checkpoint, device="cpu", half=True)
    assert half.metadata.precision == "fp16"
    ours = half.predict(images, CONF, IOU)
    assert_matched(ours, reference, 1e-2)
    batch = half.prepare(images)[0]
    assert_fp16_close(half.run(batch)["output"], half_reference(checkpoint, batch))
    moved = [Detections(d.boxes * 0.5, d.scores, d.classes) for d in ours]
    with pytest.raises(AssertionError, match="no match"):
        assert_matched(moved, reference, 1e-2)


def assert_fp16_close(raw: np.ndarray, reference: np.ndarray) -> None:
    """Raw outputs ``[B, N, 5 + C]`` within float16 tolerance: boxes 0.5 px, scores 0.01."""
    np.testing.assert_allclose(raw[..., :4], reference[..., :4], atol=0.5)
    np.testing.assert_allclose(raw[..., 4:], reference[..., 4:], atol=1e-2)


def half_reference(checkpoint: Path, batch: np.ndarray) -> np.ndarray:
    """The float32 raw outputs ``[B, N, 5 + C]`` of a batch on the CPU."""
    return TorchBackend(checkpoint, device="cpu").infer(batch)["output"]


# ------------------------------------------------------------------------------------ CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_SKIP)
def test_cuda_half_and_graphs_match_fp32(checkpoint):
    images = pictures()
    cpu = Predictor.from_path(checkpoint, device="cpu")
    reference = cpu.predict(images, CONF, IOU)
    batch = cpu.prepare(images)[0]
    raw_reference = cpu.run(batch)["output"]
    fp32 = Predictor.from_path(checkpoint, device="cuda", half=False)
    assert fp32.metadata.precision == "fp32" and fp32.backend.device.type == "cuda"
    # cuDNN uses TF32 (float16's 10-bit mantissa) for float32 convolutions by default
    assert_matched(fp32.predict(images, CONF, IOU), reference, 1e-2)
    assert_fp16_close(fp32.run(batch)["output"], raw_reference)
    outputs = {}
    for graphs in (False, True):
        predictor = Predictor.from_path(checkpoint, device="cuda", cuda_graphs=graphs)
        assert predictor.metadata.precision == "fp16"  # the CUDA default
        for _ in range(2):  # with graphs: the first run captures, the second replays
            assert_matched(predictor.predict(images, CONF, IOU), reference, 1e-2)
            raw = predictor.run(batch)["output"]
            assert_fp16_close(raw, raw_reference)
        one = predictor.run(batch[:1])["output"]  # another shape: another graph
        assert_fp16_close(one, raw[:1])
        if graphs:
            assert sorted(predictor.backend._graphs) == [(1, 3, 128, 128), (3, 3, 128, 128)]
        outputs[graphs] = raw
        predictor.close()
    assert_fp16_close(outputs[True], outputs[False])
