"""Every graph we export contains only what TensorRT's ONNX parser accepts (``trt_ops``), and
the check itself rejects what TensorRT rejects."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from trt_ops import SUPPORTED_OPS, NotParsable, assert_tensorrt_parsable, tensorrt_problems

VARIANTS = ["nms_dynamic", "half_dynamic", "half_nms"]  # plain graphs: test_export_onnx


@pytest.mark.parametrize("variant", VARIANTS)
def test_exported_graphs_are_tensorrt_parsable(exported_variants, variant):
    path = exported_variants[variant]
    assert_tensorrt_parsable(path)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert ops <= SUPPORTED_OPS
    if "nms" in variant:
        assert "NonMaxSuppression" in ops  # the standard op, no plugin


def graph(nodes, initializers, inputs=None, outputs=None, opset=17):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])]
    return helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers),
        opset_imports=[helper.make_opsetid("", opset)],
    )


def conv_qdq(zero_point, weight_scale, weight_zero=np.zeros(4, np.int8), axis=0):
    """x -> Q -> DQ -> Conv(DQ(int8 weights))."""
    inits = [
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(zero_point, "z"),
        numpy_helper.from_array(np.ones((4, 4, 1, 1), np.int8), "wq"),
        numpy_helper.from_array(weight_scale, "ws"),
        numpy_helper.from_array(weight_zero, "wz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], name="wdq", axis=axis),
        helper.make_node("Conv", ["xd", "w"], ["y"], name="conv"),
    ]
    return graph(nodes, inits)


def test_symmetric_per_channel_int8_passes():
    model = conv_qdq(np.array(0, np.int8), np.full(4, 0.02, np.float32))
    onnx.checker.check_model(model)
    assert tensorrt_problems(model) == []


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (conv_qdq(np.array(0, np.uint8), np.full(4, 0.02, np.float32)), "signed INT8"),
        (conv_qdq(np.array(3, np.int8), np.full(4, 0.02, np.float32)), "zero point not 0"),
        (
            conv_qdq(np.array(0, np.int8), np.array(0.02, np.float32), np.array(0, np.int8)),
            "per tensor",
        ),  # fmt: skip
        (conv_qdq(np.array(0, np.int8), np.full(4, 0.02, np.float32), axis=1), "axis 1"),
    ],
    ids=["uint8", "zero-point", "per-tensor-weights", "axis"],
)
def test_asymmetric_or_per_tensor_qdq_fails(model, reason):
    with pytest.raises(NotParsable, match=reason):
        assert_tensorrt_parsable(model)


def test_unsupported_operators_fail():
    unique = graph([helper.make_node("Unique", ["x"], ["y"], name="u")], [])
    plugin = graph([helper.make_node("EfficientNMS_TRT", ["x"], ["y"], name="p", domain="trt")], [])
    topk = graph(
        [helper.make_node("TopK", ["x", "k"], ["y", "i"], name="t")],
        [numpy_helper.from_array(np.array([4000], np.int64), "k")],
        outputs=[
            helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 8, 8]) for n in ("y", "i")
        ],
    )
    cubic = graph(
        [helper.make_node("Resize", ["x", "", "sc"], ["y"], name="r", mode="cubic")],
        [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc")],
    )
    old = graph([helper.make_node("Relu", ["x"], ["y"], name="r")], [], opset=8)
    for model, reason in [
        (unique, "Unique 'u': operator not supported"),
        (plugin, "custom domain"),
        (topk, "K = 4000"),
        (cubic, "resize mode cubic"),
        (old, "opset 8"),
    ]:
        with pytest.raises(NotParsable, match=reason):
            assert_tensorrt_parsable(model)
