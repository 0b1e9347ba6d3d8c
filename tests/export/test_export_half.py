"""``--half``: FP16 weights and compute inside, float32 input and outputs; runs on ONNX Runtime's
CPU provider and stays within the FP16 tolerance of the FP32 export."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto

from export.onnx import load_model
from export.verify import TOLERANCES, sample_images, verify_onnx
from serve.runtime.metadata import read_onnx_metadata
from serve.runtime.predictor import Predictor


def test_half_graph_types(exported_variants):
    proto = onnx.load(str(exported_variants["half_dynamic"]))
    graph = proto.graph
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    weights = {i.name: i for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(weights[n.input[1]].data_type == TensorProto.FLOAT16 for n in convs), (
        "every Conv weight is float16"
    )
    biases = [weights[n.input[2]] for n in convs if len(n.input) > 2]
    assert all(b.data_type == TensorProto.FLOAT16 for b in biases)
    casts = [n for n in graph.node if n.op_type == "Cast"]
    assert len(casts) == 4  # images -> fp16; the three head maps -> fp32 for the decode
    assert read_onnx_metadata(exported_variants["half_dynamic"]).precision == "fp16"


def test_half_matches_fp32_within_tolerance(exported_variants, golden_ckpt):
    """Against the float32 PyTorch model (which the FP32 export equals to 1e-4, see
    test_export_onnx), through the serving runtime on ONNX Runtime's CPU provider."""
    tol = TOLERANCES["fp16"]
    model, _ = load_model(golden_ckpt)
    fp16 = Predictor.from_path(
        exported_variants["half_dynamic"], providers=["CPUExecutionProvider"]
    )
    images, _ = sample_images(3)
    batch, _ = fp16.prepare(images)
    with torch.no_grad():
        ref = model(torch.from_numpy(batch)).numpy()
    got = fp16.run(batch)["output"]
    assert got.dtype == np.float32 and got.shape == ref.shape
    scale = float(np.abs(ref[..., :4]).max())
    np.testing.assert_allclose(got[..., :4], ref[..., :4], rtol=tol.rtol, atol=tol.atol * scale)
    np.testing.assert_allclose(got[..., 4:], ref[..., 4:], rtol=tol.rtol, atol=tol.atol)
    # it really is a different (FP16) computation: well above float32 rounding (~1e-7)
    assert np.abs(got[..., 4:] - ref[..., 4:]).max() > 1e-5
    for variant in ("half_dynamic", "half_nms"):
        report = verify_onnx(exported_variants[variant], model, record=False)
        assert report.ok, report.summary()
        assert report.tolerance == tol and report.matched > 0
