"""INT8 ONNX: calibrate on real images, quantize with ONNX Runtime's tools, state the cost.

``quantize_int8`` turns a float ONNX written by ``detector export onnx`` into a Q/DQ INT8 ONNX:

1. **Plan** (:func:`plan_quantization`): which nodes to quantize. The graph is split at the
   head's prediction convolutions (the last Conv of each branch: box, objectness, class). What
   runs before them (backbone, neck, head convs) is quantized; what runs after them (the
   per-level Concat, the decode's Exp/Add/Mul on boxes, the Sigmoids, the output Concat) stays
   float, so box pixels (0-640) and probabilities (0-1) never share one INT8 scale. The plan is
   counted by op type, recorded, and overridable (``quantize_ops``, ``exclude``, ``include``,
   ``quantize_all``).
2. **Calibrate** (:mod:`export.calib`): ONNX Runtime's calibrator over real images through the
   serving pre-processing, in chunks (bounded memory), with progress.
3. **Quantize**: ``onnxruntime.quantization.quantize_static`` with the target's settings
   (:data:`TARGETS`): ``tensorrt`` is what TensorRT accepts (signed INT8 activations and weights,
   zero point 0, weights per channel, float bias, Q/DQ on the inputs of the quantized ops);
   ``cpu`` is the form that ran fastest on ONNX Runtime's CPU provider (see
   ``benchmarks/export_int8.md``).
4. **Evaluate** (optional, :mod:`export.int8_eval`): COCO mAP of the float and INT8 files on a
   dataset's val split through the serving runtime; ``max_drop`` refuses a model that loses more.

The report goes into the INT8 file's metadata (``extra["int8"]``). The file is written to a
temporary path beside ``out`` and renamed only when everything passed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    create_calibrator,
    quantize_static,
    save_tensors_data,
)

from detector.core.config import suggest
from export.calib import ImageCalibrationReader, Progress, calibration_images
from serve.runtime.metadata import (
    INPUT_NAME,
    ModelMetadata,
    read_onnx_metadata,
    write_onnx_metadata,
)

LOGGER = logging.getLogger(__name__)

METHODS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
# Calibrator settings per method (ONNX Runtime's create_calibrator extra_options). Entropy:
# ONNX Runtime's defaults (128 bins, 128 quantized bins) leave a single candidate threshold,
# i.e. min/max; 256 bins give its KL search 65 candidates. Its search is pure Python and its
# cost grows faster than the bin count (nano, 16 images, 2 busy cores: 128 bins 32 s, 256 bins
# 93 s, 512 bins 253 s), so 256 is the compromise.
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "minmax": {},
    "entropy": {"num_bins": 256, "num_quantized_bins": 128},
    "percentile": {"num_bins": 2048, "percentile": 99.999},
}
# minmax: the smallest drop on BCCD (yolox_tiny, TensorRT form: minmax -0.0021 mAP, percentile
# -0.0057, entropy -0.0073; benchmarks/export_int8.md) and the fastest calibration. Clipping
# ranges (entropy, percentile) cuts the large activations that box regression relies on.
DEFAULT_METHOD = "minmax"
DEFAULT_IMAGES = 128
CALIB_CHUNK = 8  # images per calibrator pass: bounds the memory of histogram calibration
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


class Int8Error(ValueError):
    """A user-facing INT8 export problem (bad input file, option, or a refused result)."""


class AccuracyDropError(Int8Error):
    """The INT8 model lost more mAP than ``max_drop`` allows; no file was kept."""

    def __init__(self, message: str, report: Int8Report) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class TargetConfig:
    """How ONNX Runtime's quantizer is driven for one deployment target.

    ``quantize_ops``: the op types quantized by default; ``quantize_outputs``: Q/DQ also on the
    outputs of quantized ops (ONNX Runtime's CPU kernels need it to fuse ``DQ -> op -> Q`` into
    one integer op; TensorRT wants Q/DQ only on the inputs of weighted ops and fuses the rest).
    """

    quant_format: str = "QDQ"  # "QDQ" | "QOperator"
    activation_type: str = "QInt8"  # "QInt8" | "QUInt8"
    weight_type: str = "QInt8"
    activation_symmetric: bool = True
    per_channel: bool = True
    reduce_range: bool = False
    quantize_bias: bool = False
    quantize_ops: tuple[str, ...] = ("Conv",)
    quantize_outputs: bool = False


TARGETS: dict[str, TargetConfig] = {
    # TensorRT: symmetric signed INT8 only (zero point 0), weights per channel, float bias
    # (an INT32 bias DequantizeLinear is not an INT8 Q/DQ TensorRT fuses), Q/DQ on conv inputs.
    "tensorrt": TargetConfig(),
    # ONNX Runtime CPU (benchmarks/export_int8.md, BCCD tiny, AVX-512 VNNI): QDQ with unsigned
    # asymmetric activations, per-channel weights and the whole body quantized (so ORT fuses
    # integer convs, sigmoids and muls) ran 2.19x FP32 at -0.0010 mAP. Measured beside it:
    # per-tensor 1.98x, QOperator 1.91x, reduce_range 1.85x, convs only 1.61x, S8S8 0.73x and
    # the TensorRT form 0.83x (ORT cannot fuse Q/DQ on conv inputs only).
    "cpu": TargetConfig(
        activation_type="QUInt8",
        activation_symmetric=False,
        quantize_bias=True,
        quantize_ops=("Conv", "Sigmoid", "Mul", "Add", "Concat", "MaxPool", "Resize", "Slice"),
        quantize_outputs=True,
    ),
}


# --------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class QuantPlan:
    """Which nodes ONNX Runtime may quantize and which stay float.

    ``prediction_convs``: the last Conv of each head branch; ``tail``: every node downstream of
    them (decode, sigmoids, output concat); ``quantize``: node names handed to the quantizer
    (``None``: all nodes, the quantize-everything baseline); ``exclude``: node names kept float.
    """

    prediction_convs: tuple[str, ...]
    tail: tuple[str, ...]
    quantize: tuple[str, ...] | None
    exclude: tuple[str, ...]
    op_types: tuple[str, ...] | None


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name (the quantizer selects nodes by name); in place."""
    seen = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in seen:
                name += "_"
            node.name = name
            seen.add(name)


def split_at_prediction_convs(graph: onnx.GraphProto) -> tuple[list[str], list[str]]:
    """``(prediction_convs, tail)``: the Convs no other Conv depends on, and every node that
    consumes (directly or not) their outputs. Node names, in graph order."""
    producers = {out: node for node in graph.node for out in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    if not convs:
        raise Int8Error(
            "the graph has no Conv node; is this a detector exported by 'detector export onnx'?"
        )
    feeds_conv: set[str] = set()  # nodes upstream of some Conv's data input
    stack = [conv.input[0] for conv in convs]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in feeds_conv:
            continue
        feeds_conv.add(node.name)
        stack.extend(node.input)
    heads = [conv.name for conv in convs if conv.name not in feeds_conv]
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node)
    tail: set[str] = set()
    frontier = [out for node in graph.node if node.name in heads for out in node.output]
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.name not in tail:
                tail.add(node.name)
                frontier.extend(node.output)
    return heads, [node.name for node in graph.node if node.name in tail]


def plan_quantization(
    model: onnx.ModelProto,
    quantize_ops: Sequence[str] | None,
    exclude: Iterable[str] = (),
    include: Iterable[str] = (),
    quantize_all: bool = False,
) -> QuantPlan:
    """Choose the nodes to quantize (see the module docstring). Names must be set
    (:func:`name_nodes`).

    Args:
        quantize_ops: op types to quantize; ``None`` with ``quantize_all``: every type ONNX
            Runtime can quantize.
        exclude: more node names to keep float.
        include: node names to quantize although the plan keeps them float (e.g. a tail node).
        quantize_all: no float tail, no op-type filter: ONNX Runtime's plain defaults.
    """
    graph = model.graph
    names = {node.name for node in graph.node}
    exclude, include = list(exclude), list(include)
    for name in (*exclude, *include):
        if name not in names:
            raise Int8Error(f"node {name!r} is not in the graph{suggest(name, names)}")
    heads, tail = split_at_prediction_convs(graph)
    if quantize_all:
        return QuantPlan(tuple(heads), tuple(tail), None, tuple(exclude), None)
    ops = set(quantize_ops or ())
    kept = (set(tail) | set(exclude)) - set(include)
    chosen = [
        node.name
        for node in graph.node
        if (node.op_type in ops and node.name not in kept) or node.name in include
    ]
    if not chosen:  # an empty list would make ONNX Runtime quantize every node
        raise Int8Error(
            f"nothing to quantize: no node of types {sorted(ops)} outside the "
            "float tail and --exclude"
        )
    return QuantPlan(
        tuple(heads), tuple(tail), tuple(chosen), tuple(sorted(kept)), tuple(sorted(ops))
    )


def quantized_op_counts(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    """From a quantized graph: ``(computed on INT8, float)`` op counts. A node is "INT8" when
    one of its inputs comes from a ``DequantizeLinear`` (its weights or activations were
    quantized); Q/DQ nodes themselves and QOperator ops (``QLinear*``) are counted as INT8."""
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    int8, fp = Counter(), Counter()
    for node in model.graph.node:
        if node.op_type in QDQ_OPS or node.op_type == "Constant":
            continue
        on_int8 = node.op_type.startswith(("QLinear", "QGemm")) or any(
            t in dequantized for t in node.input
        )
        (int8 if on_int8 else fp)[node.op_type] += 1
    return dict(sorted(int8.items())), dict(sorted(fp.items()))


# --------------------------------------------------------------------------------- the report
@dataclass
class Int8Report:
    """What was done and what it cost; stored as ``extra["int8"]`` in the INT8 file."""

    method: str
    target: str
    images: int
    calib_source: str
    settings: dict[str, Any]
    calib_options: dict[str, Any]
    quantized_ops: dict[str, int]
    float_ops: dict[str, int]
    kept_float_nodes: list[str]
    qdq_nodes: int
    calib_seconds: float
    eval_data: str | None = None
    float_map: float | None = None
    float_map50: float | None = None
    int8_map: float | None = None
    int8_map50: float | None = None
    max_drop: float | None = None
    output: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def drop(self) -> float | None:
        """mAP@0.5:0.95 lost (float - INT8), or ``None`` without an evaluation."""
        if self.float_map is None or self.int8_map is None:
            return None
        return self.float_map - self.int8_map

    @property
    def drop50(self) -> float | None:
        if self.float_map50 is None or self.int8_map50 is None:
            return None
        return self.float_map50 - self.int8_map50

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["drop"], data["drop50"] = self.drop, self.drop50
        return data


# ------------------------------------------------------------------------------ the pipeline
def quantize_int8(
    onnx_path: str | Path,
    calib: str | Path,
    out: str | Path,
    images: int = DEFAULT_IMAGES,
    method: str = DEFAULT_METHOD,
    target: str = "tensorrt",
    quantize_ops: Sequence[str] | None = None,
    exclude: Iterable[str] = (),
    include: Iterable[str] = (),
    quantize_all: bool = False,
    eval_data: str | Path | None = None,
    max_drop: float | None = None,
    config: TargetConfig | None = None,
    float_result: tuple[float, float] | None = None,
    progress: Progress | None = None,
    eval_progress: Callable[[str, int, int], None] | None = None,
) -> Int8Report:
    """Write an INT8 Q/DQ ONNX of ``onnx_path`` to ``out`` and report what it costs.

    Args:
        onnx_path: a float ONNX written by ``detector export onnx`` (it carries the metadata).
        calib: a dataset config YAML (its train split) or a directory of calibration images.
        out: the INT8 ONNX to write.
        images: number of calibration images (spread over the source).
        method: ``minmax``, ``entropy`` or ``percentile``.
        target: ``tensorrt`` (symmetric signed INT8 Q/DQ) or ``cpu`` (fastest on ORT CPU).
        quantize_ops / exclude / include / quantize_all: override the plan
            (:func:`plan_quantization`); ``quantize_ops`` defaults to the target's.
        eval_data: a dataset config; its val split is scored with the float and INT8 models.
        max_drop: the largest mAP@0.5:0.95 drop accepted (needs ``eval_data``); larger raises
            :class:`AccuracyDropError` and no file is written.
        config: replaces the target's :class:`TargetConfig` (for measuring variants).
        float_result: ``(mAP, mAP50)`` of the float model on ``eval_data`` when already known.
        progress: ``(done, total)`` during calibration; ``eval_progress``: ``(which, done,
            total)`` during evaluation.
    """
    onnx_path, out = Path(onnx_path), Path(out)
    if method not in METHODS:
        raise Int8Error(f"unknown calibration method {method!r}; choose from {sorted(METHODS)}")
    if target not in TARGETS:
        raise Int8Error(f"unknown target {target!r}; choose from {sorted(TARGETS)}")
    if max_drop is not None and eval_data is None:
        raise Int8Error("--max-drop needs --eval DATA: the drop is measured on that data")
    if out.resolve() == onnx_path.resolve():
        raise Int8Error(f"{out}: the INT8 output would overwrite its float input")
    metadata = read_onnx_metadata(onnx_path)  # names the file when missing or not ONNX
    if metadata.precision != "fp32":
        raise Int8Error(
            f"{onnx_path}: precision is {metadata.precision}; INT8 calibration "
            "starts from the fp32 ONNX (export without --half)"
        )
    cfg = config or TARGETS[target]
    ops = tuple(quantize_ops) if quantize_ops else cfg.quantize_ops

    model = onnx.load(str(onnx_path))
    if any(node.op_type in QDQ_OPS for node in model.graph.node):
        raise Int8Error(f"{onnx_path}: already quantized (it has Q/DQ nodes)")
    name_nodes(model)
    plan = plan_quantization(model, None if quantize_all else ops, exclude, include, quantize_all)
    paths = calibration_images(calib, images)
    LOGGER.info(
        "calibrating %s on %d images from %s (%s, target %s)",
        onnx_path.name,
        len(paths),
        calib,
        method,
        target,
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="int8.", dir=out.parent) as work:
        work_dir = Path(work)
        named = work_dir / "float.onnx"
        onnx.save(model, str(named))
        reader = ImageCalibrationReader(
            paths, metadata.input_size, INPUT_NAME, metadata.batch or 1, progress
        )
        started = time.perf_counter()
        cache = work_dir / "ranges.json"
        calib_ops = None if quantize_all else list(plan.op_types or ())
        _calibrate(named, reader, method, calib_ops, cache, work_dir)
        calib_seconds = time.perf_counter() - started
        staged = work_dir / "int8.onnx"
        _quantize(named, staged, cache, method, cfg, plan)

        quantized = onnx.load(str(staged))
        int8_ops, float_ops = quantized_op_counts(quantized)
        report = Int8Report(
            method=method,
            target=target,
            images=len(paths),
            calib_source=str(calib),
            settings={
                **asdict(cfg),
                "quantize_ops": list(plan.op_types or ["<all>"]),
                "quantize_all": quantize_all,
            },
            calib_options=METHOD_OPTIONS[method],
            quantized_ops=int8_ops,
            float_ops=float_ops,
            kept_float_nodes=list(plan.exclude),
            qdq_nodes=sum(node.op_type in QDQ_OPS for node in quantized.graph.node),
            calib_seconds=round(calib_seconds, 1),
            max_drop=max_drop,
        )
        _write_metadata(quantized, metadata, report, staged)
        if eval_data is not None:
            _evaluate(onnx_path, staged, eval_data, report, float_result, eval_progress)
            _write_metadata(quantized, metadata, report, staged)
            if max_drop is not None and report.drop is not None and report.drop > max_drop:
                raise AccuracyDropError(
                    f"INT8 mAP {report.int8_map:.4f} vs float {report.float_map:.4f}: drop "
                    f"{report.drop:.4f} > --max-drop {max_drop}; no INT8 file written "
                    f"({out} not created or changed)",
                    report,
                )
        os.replace(staged, out)
    report.output = str(out)
    return report


def _calibrate(
    model_path: Path,
    reader: ImageCalibrationReader,
    method: str,
    op_types: list[str] | None,
    cache: Path,
    work_dir: Path,
) -> None:
    """Run ONNX Runtime's calibrator for ``method`` in chunks; save the ranges to ``cache``."""
    calibrator = create_calibrator(
        model_path,
        op_types,
        augmented_model_path=str(work_dir / "augmented.onnx"),
        calibrate_method=METHODS[method],
        extra_options=dict(METHOD_OPTIONS[method]),
    )
    with contextlib.redirect_stdout(io.StringIO()):  # ORT prints its histogram settings
        for start in range(0, len(reader), CALIB_CHUNK):
            reader.set_range(start, start + CALIB_CHUNK)
            calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
    save_tensors_data(ranges, cache)
    del calibrator


class _DropPreprocessHint(logging.Filter):
    """quantize_static advises ``quant_pre_process``; our graphs are already simplified."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def _quantize(
    model_path: Path, out: Path, cache: Path, method: str, cfg: TargetConfig, plan: QuantPlan
) -> None:
    extra: dict[str, Any] = {
        "ActivationSymmetric": cfg.activation_symmetric,
        "WeightSymmetric": True,
        "QuantizeBias": cfg.quantize_bias,
    }
    if not cfg.quantize_outputs and plan.op_types is not None:
        extra["OpTypesToExcludeOutputQuantization"] = list(plan.op_types)
    hint = _DropPreprocessHint()
    logging.getLogger().addFilter(hint)
    try:
        quantize_static(
            str(model_path),
            str(out),
            calibration_data_reader=None,
            quant_format=QuantFormat[cfg.quant_format],
            op_types_to_quantize=list(plan.op_types) if plan.op_types is not None else None,
            per_channel=cfg.per_channel,
            reduce_range=cfg.reduce_range,
            activation_type=QuantType[cfg.activation_type],
            weight_type=QuantType[cfg.weight_type],
            nodes_to_quantize=list(plan.quantize) if plan.quantize is not None else None,
            nodes_to_exclude=list(plan.exclude),
            calibrate_method=METHODS[method],
            extra_options=extra,
            calibration_cache_path=str(cache),
        )
    finally:
        logging.getLogger().removeFilter(hint)


def _write_metadata(
    model: onnx.ModelProto, metadata: ModelMetadata, report: Int8Report, path: Path
) -> None:
    write_onnx_metadata(
        model, metadata.with_updates(precision="int8", extra={"int8": report.to_dict()})
    )
    onnx.save(model, str(path))


def _evaluate(
    float_path: Path,
    int8_path: Path,
    data: str | Path,
    report: Int8Report,
    float_result: tuple[float, float] | None,
    progress: Callable[[str, int, int], None] | None,
) -> None:
    from export.int8_eval import evaluate_onnx

    def tagged(which: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda d, t: progress(which, d, t))

    if float_result is None:
        result = evaluate_onnx(float_path, data, progress=tagged("float"))
        float_result = (result.mAP, result.mAP50)
    int8 = evaluate_onnx(int8_path, data, progress=tagged("int8"))
    report.eval_data = str(data)
    report.float_map, report.float_map50 = float_result
    report.int8_map, report.int8_map50 = int8.mAP, int8.mAP50


def replace_config(target: str, **changes: Any) -> TargetConfig:
    """The target's :class:`TargetConfig` with some fields changed (benchmarks use this)."""
    return replace(TARGETS[target], **changes)
