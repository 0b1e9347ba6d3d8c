"""``export_onnx``: the ONNX graph equals the PyTorch model (nano, tiny; fixed and dynamic batch),
carries its metadata, and the serving runtime turns it into the same detections."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from trt_ops import assert_tensorrt_parsable

from detector.core.preprocess import boxes_to_original
from detector.data.synth import SynthSpec, synth_image
from detector.ops import postprocess
from export.onnx import export_onnx, load_model
from serve.runtime.metadata import read_onnx_metadata
from serve.runtime.predictor import Predictor

SIZE = 128


def images(count: int, seed: int = 0) -> list[np.ndarray]:
    spec = SynthSpec(image_size=(90, 150), object_size=(20, 60), objects=(1, 4), num_classes=3)
    return [synth_image(np.random.default_rng([seed, i]), spec)[0] for i in range(count)]


def assert_close_to_torch(got: np.ndarray, expected: np.ndarray) -> None:
    """1e-4 relative: boxes to 1e-4 of the box scale (input pixels), probabilities to 1e-4."""
    assert got.shape == expected.shape
    scale = float(np.abs(expected[..., :4]).max())
    np.testing.assert_allclose(got[..., :4], expected[..., :4], rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(got[..., 4:], expected[..., 4:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ckpt", ["nano_ckpt", "tiny_ckpt"])
@pytest.mark.parametrize("batch", [1, 3, None], ids=["batch1", "batch3", "dynamic"])
def test_onnx_matches_pytorch(ckpt, batch, request, tmp_path):
    weights = request.getfixturevalue(ckpt)
    out = export_onnx(
        weights, tmp_path / "m.onnx", batch=batch or 1, dynamic=batch is None, imgsz=SIZE
    )
    assert_tensorrt_parsable(out)
    model, _ = load_model(weights)
    predictor = Predictor.from_path(out, providers=["CPUExecutionProvider"])
    meta = predictor.metadata
    assert meta.batch == batch and meta.layout == "raw" and meta.precision == "fp32"
    assert meta.input_size == (SIZE, SIZE) and meta.class_names == ("red", "green", "blue")
    for count in (1, 3):  # a fixed batch 3 model pads one image; batch 1 runs three times
        pictures = images(count, seed=count)
        batch_in, ratios = predictor.prepare(pictures)
        with torch.no_grad():
            expected = model(torch.from_numpy(batch_in)).numpy()
        got = predictor.run(batch_in)["output"]
        assert_close_to_torch(got, expected)
        # the runtime's detections are torch's postprocess, mapped back to the image
        dets = predictor.predict(pictures, conf=0.3, iou=0.45)
        ref = postprocess(torch.from_numpy(got), conf_thres=0.3, iou_thres=0.45)
        for det, r, ratio, picture in zip(dets, ref, ratios, pictures):
            r = r.numpy()
            assert len(r) > 0
            np.testing.assert_array_equal(det.classes, r[:, 5].astype(np.int64))
            np.testing.assert_allclose(det.scores, r[:, 4], rtol=1e-6)
            np.testing.assert_allclose(
                det.boxes, boxes_to_original(r[:, :4], ratio, picture.shape[:2]), atol=1e-3
            )


def test_graph_and_metadata(nano_ckpt, tmp_path):
    out = export_onnx(nano_ckpt, tmp_path / "m.onnx", imgsz=(96, 160), batch=2)
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version >= 17
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["output"]
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 96, 160]
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)  # fused
    meta = read_onnx_metadata(out)
    assert meta.input_size == (96, 160) and meta.batch == 2 and meta.strides == (8, 16, 32)
    assert meta.preprocess.input_height == 96 and meta.preprocess.input_width == 160
    assert meta.model_name == "yolox_nano"
    # no temporary file is left beside the model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_input_size_must_fit_the_strides(nano_ckpt, tmp_path):
    with pytest.raises(ValueError, match="multiples of 32"):
        export_onnx(nano_ckpt, tmp_path / "m.onnx", imgsz=100)
    assert not (tmp_path / "m.onnx").exists()
