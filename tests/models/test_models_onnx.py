"""The model (decode included) exports to ONNX with a dynamic batch and runs in onnxruntime."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from detector.models import build_model, fuse_model

ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (the onnx extra)")


def test_fused_nano_exports_and_matches_onnxruntime(tmp_path):
    model = fuse_model(build_model("yolox_nano", num_classes=3).eval())
    path = tmp_path / "nano.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 64, 96),),
            str(path),
            input_names=["images"],
            output_names=["output"],
            dynamic_axes={"images": {0: "batch"}, "output": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        expected = model(x).numpy()
    (got,) = session.run(None, {"images": x.numpy()})
    assert got.shape == (2, 126, 8)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
