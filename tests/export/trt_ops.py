"""What TensorRT's ONNX parser accepts: our only check of the TensorRT path on machines without a
GPU, so it is strict.

Source: onnx-tensorrt ``docs/operators.md``, "TensorRT 10.15 supports operators in the inclusive
range of opset 9 to opset 24" (the 10.x line, 10.15 GA of 2026-02-02; read through the stored
public index of GitHub files, file id 4266455660). Only operators marked ``Y`` are listed, with
the restrictions of that table that can apply to our graphs checked below. JetPack 6 ships
TensorRT 10.3 and JetPack 7 10.13, whose parsers accept fewer operators than 10.15; everything our
graphs use (Conv, Sigmoid, Mul, Add, Concat, Slice, MaxPool, Resize, Reshape, Transpose, Exp,
Cast, NonMaxSuppression, TopK, ScatterND, Gather*, Q/DQ, ...) is in the TensorRT 8.5 table already
(onnx-tensorrt commit 6d0ab7be324d02c7feb3a306b6fdbeae84f71ddc), so this list does not let a
10.15-only operator through unnoticed for our exports.

Q/DQ: TensorRT accepts only symmetric INT8: ``QuantizeLinear``/``DequantizeLinear`` with a signed
INT8 zero point equal to 0 (table: "`y_zero_point` must be 0", "`x_zero_point` must be zero"),
and weights quantized per output channel (axis 0 of a Conv weight).

The INT8 export's tests import :func:`assert_tensorrt_parsable` from here.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

SOURCE = "onnx-tensorrt docs/operators.md, TensorRT 10.15 (opset 9-24)"
MIN_OPSET, MAX_OPSET = 9, 24

# operators marked Y in the TensorRT 10.15 table
SUPPORTED_OPS = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
    BatchNormalization BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant
    ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear
    Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
    GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
    GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax
    Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
    LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
    MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
    ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
    RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
    ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
    ReverseSequence RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan
    Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
    Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter
    ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()
)

TOPK_LIMIT = 3840  # "`K` input must be less than 3840", and "`sorted` must be 1"
RESIZE_MODES = {"nearest", "linear"}
RESIZE_COORDINATES = {
    "half_pixel",
    "pytorch_half_pixel",
    "tf_half_pixel_for_nn",
    "asymmetric",
    "align_corners",
}
RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
# inputs that must be build-time constants (initializers or Constant nodes)
CONSTANT_INPUTS = {
    "TopK": (1,),
    "NonMaxSuppression": (2, 3, 4),  # max boxes per class, IoU and score thresholds
    "ReduceL1": (1,),
    "ReduceL2": (1,),
    "ReduceLogSum": (1,),
    "ReduceLogSumExp": (1,),
    "ReduceMax": (1,),
    "ReduceMean": (1,),
    "ReduceMin": (1,),
    "ReduceProd": (1,),
    "ReduceSum": (1,),
    "ReduceSumSquare": (1,),
    "QuantizeLinear": (1, 2),
    "DequantizeLinear": (1, 2),
}


class NotParsable(AssertionError):
    """A graph that TensorRT's ONNX parser would reject."""


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _text(value: object) -> object:
    return value.decode() if isinstance(value, bytes) else value


def _check_qdq(node: onnx.NodeProto, constants: dict[str, np.ndarray], problems: list[str]) -> None:
    where = f"{node.op_type} '{node.name}'"
    if len(node.input) < 3 or not node.input[2]:
        problems.append(f"{where}: no zero point (the default type is UINT8; TensorRT needs INT8)")
        return
    zero_point = constants.get(node.input[2])
    if zero_point is None:
        problems.append(f"{where}: zero point is not a constant")
        return
    if zero_point.dtype != np.int8:
        problems.append(f"{where}: zero point type {zero_point.dtype}, TensorRT needs signed INT8")
    if np.any(zero_point != 0):
        problems.append(f"{where}: zero point not 0 (TensorRT INT8 is symmetric)")
    scale = constants.get(node.input[1])
    if scale is not None and np.any(scale <= 0):
        problems.append(f"{where}: non-positive scale")
    # weights (a constant 4-D tensor: stored INT8 under a DQ, or float under a Q): per channel
    weight = constants.get(node.input[0])
    if weight is not None and weight.ndim == 4:
        if scale is None or scale.size != weight.shape[0]:
            problems.append(
                f"{where}: Conv weights quantized per tensor; TensorRT wants per channel (axis 0)"
            )
        if int(_attr(node, "axis", 1)) != 0:
            problems.append(f"{where}: weight quantization axis {_attr(node, 'axis', 1)}, not 0")
        if node.op_type == "DequantizeLinear" and weight.dtype != np.int8:
            problems.append(f"{where}: quantized weights of type {weight.dtype}, not INT8")


def tensorrt_problems(model: onnx.ModelProto) -> list[str]:
    """Every reason TensorRT 10.x's ONNX parser would reject ``model`` (empty: parsable)."""
    problems: list[str] = []
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    version = opsets.get("ai.onnx")
    if version is None or not MIN_OPSET <= version <= MAX_OPSET:
        problems.append(f"opset {version} outside TensorRT's {MIN_OPSET}-{MAX_OPSET}")
    graph = model.graph
    if model.functions:
        problems.append(f"local functions {[f.name for f in model.functions]} (expand them)")
    constants = _constants(graph)
    dequantized = {
        out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output
    }
    counts = Counter(node.op_type for node in graph.node)
    for node in graph.node:
        where = f"{node.op_type} '{node.name}'"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain '{node.domain}' (a plugin would be needed)")
            continue
        if node.op_type not in SUPPORTED_OPS:
            problems.append(f"{where}: operator not supported by TensorRT's ONNX parser")
            continue
        for index in CONSTANT_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index]:
                if node.input[index] not in constants:
                    problems.append(f"{where}: input {index} must be a build-time constant")
        if node.op_type == "TopK":
            k = constants.get(node.input[1])
            if k is not None and int(np.asarray(k).reshape(-1)[0]) >= TOPK_LIMIT:
                problems.append(f"{where}: K = {int(k.reshape(-1)[0])}, must be < {TOPK_LIMIT}")
            if int(_attr(node, "sorted", 1)) != 1:
                problems.append(f"{where}: sorted must be 1")
        elif node.op_type == "Resize":
            mode = _text(_attr(node, "mode", b"nearest"))
            coords = _text(_attr(node, "coordinate_transformation_mode", b"half_pixel"))
            nearest = _text(_attr(node, "nearest_mode", b"round_prefer_floor"))
            if mode not in RESIZE_MODES:
                problems.append(f"{where}: resize mode {mode}")
            if coords not in RESIZE_COORDINATES:
                problems.append(f"{where}: coordinate transformation {coords}")
            if mode == "nearest" and nearest not in RESIZE_NEAREST:
                problems.append(f"{where}: nearest mode {nearest}")
            if int(_attr(node, "antialias", 0)):
                problems.append(f"{where}: antialiasing")
        elif node.op_type in ("MaxPool", "AveragePool", "LpPool"):
            dilations = _attr(node, "dilations", None)
            if dilations and any(d != 1 for d in dilations):
                problems.append(f"{where}: dilations {list(dilations)} (must be all ones)")
            if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
                problems.append(f"{where}: the Indices output is unsupported")
        elif node.op_type in ("Conv", "ConvTranspose"):
            # weights: a constant, or the DequantizeLinear of one (Q/DQ INT8)
            if node.input[1] not in constants and node.input[1] not in dequantized:
                problems.append(f"{where}: weights are neither a constant nor dequantized")
            weight = constants.get(node.input[1])
            if weight is not None and weight.ndim not in (4, 5):
                problems.append(f"{where}: {weight.ndim - 2}D convolution (2D or 3D only)")
        elif node.op_type == "ScatterND":
            if _text(_attr(node, "reduction", b"none")) != "none":
                problems.append(f"{where}: reduction other than none")
        elif node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            _check_qdq(node, constants, problems)
    for value in (*graph.input, *graph.output):
        elem = value.type.tensor_type.elem_type
        if elem not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT32,
                        TensorProto.INT64, TensorProto.UINT8, TensorProto.BOOL):  # fmt: skip
            problems.append(f"I/O tensor '{value.name}' of type {TensorProto.DataType.Name(elem)}")
    if counts.get("QuantizeLinear", 0) != counts.get("DequantizeLinear", 0) and counts.get(
        "QuantizeLinear"
    ):
        # activations are Q -> DQ pairs; weights may be stored quantized (DQ only), not the reverse
        if counts["QuantizeLinear"] > counts["DequantizeLinear"]:
            problems.append("more QuantizeLinear than DequantizeLinear nodes (a Q without its DQ)")
    return problems


def assert_tensorrt_parsable(model_path: str | Path | onnx.ModelProto) -> None:
    """Fail (``AssertionError``) for any operator or Q/DQ form TensorRT's parser rejects."""
    model = model_path if isinstance(model_path, onnx.ModelProto) else onnx.load(str(model_path))
    problems = tensorrt_problems(model)
    if problems:
        name = "model" if isinstance(model_path, onnx.ModelProto) else str(model_path)
        raise NotParsable(
            f"{name}: not parsable by TensorRT ({SOURCE}):\n  " + "\n  ".join(problems)
        )
