"""Checkpoint -> ONNX: decode (and optionally class-aware NMS) in the graph, metadata inside.

The graph takes ``images [B, 3, H, W]`` float32, BGR, 0-255 (what ``detector.core.preprocess``
makes)
and returns ``output [B, N, 5 + C]`` (the evaluation-mode model: ``cx, cy, w, h`` in input
pixels, objectness, class scores), or with ``nms`` the four outputs of :mod:`export.nms`.
Batch norm is folded into the convolutions first, the graph is simplified with onnxslim, and
the file is written atomically (temporary file, then rename), so a killed export leaves no
broken ``.onnx`` behind.

Exporter: ``torch.onnx.export(..., dynamo=False)``, the TorchScript exporter. On torch 2.14 the
``dynamo=True`` exporter needs ``onnxscript`` (not a dependency; without it the call fails with
``ModuleNotFoundError``), and the in-graph NMS is an ``autograd.Function`` with a ``symbolic``,
which is the TorchScript exporter's extension point. The traced graph is static apart from the
batch dimension, which is all a YOLOX graph needs.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from detector.core.atomic import write_atomic
from detector.core.defaults import MAX_DET, PREDICT_CONF, PREDICT_IOU
from detector.models import YOLOX, CheckpointSpec, fuse_model, load_inference_model
from detector.models.decode import decode_outputs
from serve.runtime.metadata import (
    INPUT_NAME,
    NMS_OUTPUTS,
    RAW_OUTPUT,
    ModelMetadata,
    NmsSettings,
    write_onnx_metadata,
)

DEFAULT_OPSET = 17


class ExportError(ValueError):
    """An export cannot be done as asked; the message says why and names the file."""


@dataclass(frozen=True)
class OnnxExportOptions:
    """How to export.

    ``batch`` is the fixed batch size, ignored with ``dynamic``. The NMS settings apply with
    ``nms`` only; their defaults are those of ``detector predict`` and the server
    (:mod:`detector.core.defaults`). The input size is the model's (:func:`load_model`).
    """

    batch: int = 1
    dynamic: bool = False
    nms: bool = False
    half: bool = False
    score_threshold: float = PREDICT_CONF
    iou_threshold: float = PREDICT_IOU
    max_detections: int = MAX_DET
    opset: int = DEFAULT_OPSET
    simplify: bool = True

    def validate(self) -> None:
        if not self.dynamic and self.batch < 1:
            raise ExportError(f"batch must be at least 1, got {self.batch}")
        if self.opset < 17:
            raise ExportError(f"opset must be 17 or newer, got {self.opset}")
        if self.nms:
            if not 0.0 < self.score_threshold < 1.0:
                raise ExportError(
                    f"NMS score threshold must be in (0, 1), got {self.score_threshold}"
                )
            if not 0.0 < self.iou_threshold <= 1.0:
                raise ExportError(f"NMS IoU threshold must be in (0, 1], got {self.iou_threshold}")
            if self.max_detections < 1:
                raise ExportError(f"max detections must be at least 1, got {self.max_detections}")


class _Graph(nn.Module):
    """What is exported: the model, optionally FP16 inside (float32 in and out), optionally
    followed by in-graph NMS."""

    def __init__(self, model: YOLOX, half: bool, nms: nn.Module | None) -> None:
        super().__init__()
        self.model = model
        self.half = half
        self.nms = nms

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, ...]:
        if self.half:
            # the network in FP16; the decode (grid, exp, sigmoid) in float32, where box pixels
            # keep their precision (FP16 has a 0.25 px step above 256) and ONNX's Range, which
            # has no float16 form, stays valid
            maps = self.model.forward_raw(images.half())
            output = decode_outputs([m.float() for m in maps], self.model.strides)
        else:
            output = self.model(images)
        if self.nms is not None:
            return self.nms(output)
        return output


def load_model(
    weights: str | Path, model_name: str | None = None, imgsz: int | tuple[int, int] | None = None
) -> tuple[YOLOX, CheckpointSpec]:
    """The checkpoint's model in evaluation mode with batch norm folded in, and its spec (class
    names, and the input size to export at: ``imgsz``, else the checkpoint's).

    Raises:
        CheckpointError (a ValueError naming the file): missing, unreadable, an official
            ``.pth`` given without ``model_name``, or an input size that is not multiples of 32.
    """
    model, spec = load_inference_model(weights, model_name, imgsz)
    return fuse_model(model.eval()), spec


def build_metadata(
    model: YOLOX, spec: CheckpointSpec, options: OnnxExportOptions,
    max_detections: int | None = None,
) -> ModelMetadata:  # fmt: skip
    """The :class:`ModelMetadata` of an export of ``model`` at ``spec``'s input size."""
    nms = None
    if options.nms:
        nms = NmsSettings(
            score_threshold=float(options.score_threshold),
            iou_threshold=float(options.iou_threshold),
            max_detections=int(max_detections or options.max_detections),
        )
    return ModelMetadata(
        model_name=spec.model_name,
        class_names=spec.class_names,
        input_size=spec.input_size,
        strides=tuple(int(s) for s in model.strides),
        precision="fp16" if options.half else "fp32",
        layout="nms" if options.nms else "raw",
        batch=None if options.dynamic else int(options.batch),
        nms=nms,
        preprocess=spec.preprocess,
        extra={"opset": options.opset},
    )


def num_anchors(size: tuple[int, int], strides: tuple[int, ...]) -> int:
    """``N``: anchors of a ``(height, width)`` input over all levels."""
    return sum((size[0] // s) * (size[1] // s) for s in strides)


def to_onnx_model(
    model: YOLOX, size: tuple[int, int], options: OnnxExportOptions
) -> tuple[onnx.ModelProto, int | None]:
    """Trace ``model`` to an ``onnx.ModelProto`` (simplified); returns it and the NMS ``K``
    (``None`` without NMS)."""
    options.validate()
    nms_module, k = None, None
    if options.nms:
        from export.nms import InGraphNms

        k = min(options.max_detections, num_anchors(size, tuple(model.strides)))
        nms_module = InGraphNms(options.score_threshold, options.iou_threshold, k)
    model = copy.deepcopy(model).half() if options.half else model.float()  # caller's stays
    graph = _Graph(model, options.half, nms_module).eval()
    batch = 1 if options.dynamic else options.batch
    dummy = torch.zeros(batch, 3, *size)
    outputs = list(NMS_OUTPUTS) if options.nms else [RAW_OUTPUT]
    dynamic_axes = None
    if options.dynamic:
        dynamic_axes = {name: {0: "batch"} for name in (INPUT_NAME, *outputs)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                graph,
                (dummy,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=outputs,
                dynamic_axes=dynamic_axes,
                opset_version=options.opset,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(str(path))
    if options.simplify:
        import onnxslim

        proto = onnxslim.slim(proto)
    onnx.checker.check_model(proto, full_check=True)
    return proto, k


def save_atomic(proto: onnx.ModelProto, out: str | Path) -> Path:
    """Write ``proto`` to ``out`` atomically, with the process's usual file permissions."""
    return write_atomic(out, proto.SerializeToString())


def export_model(
    model: YOLOX, spec: CheckpointSpec, out: str | Path, options: OnnxExportOptions
) -> Path:
    """Export an already loaded (fused, evaluation-mode) model at ``spec``'s input size; see
    :func:`export_onnx`."""
    proto, k = to_onnx_model(model, spec.input_size, options)
    write_onnx_metadata(proto, build_metadata(model, spec, options, k))
    return save_atomic(proto, out)


def export_onnx(
    weights: str | Path,
    out: str | Path,
    model_name: str | None = None,
    imgsz: int | tuple[int, int] | None = None,
    batch: int = 1,
    dynamic: bool = False,
    nms: bool = False,
    half: bool = False,
    score_threshold: float = PREDICT_CONF,
    iou_threshold: float = PREDICT_IOU,
    max_detections: int = MAX_DET,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export checkpoint ``weights`` to ONNX file ``out``; returns ``out``.

    Args:
        weights: our ``.pt`` (it names its model) or an official YOLOX ``.pth`` (then
            ``model_name`` is required).
        imgsz: input size (int or ``(h, w)``), default the checkpoint's.
        batch: fixed batch size; ``dynamic`` makes the batch dimension dynamic instead.
        nms: class-aware NMS in the graph (``score_threshold``, ``iou_threshold``,
            ``max_detections`` = K, the padding of its outputs).
        half: FP16 weights and compute, float32 input and outputs.
    """
    options = OnnxExportOptions(
        batch=batch,
        dynamic=dynamic,
        nms=nms,
        half=half,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
        opset=opset,
    )
    options.validate()
    model, spec = load_model(weights, model_name, imgsz)
    return export_model(model, spec, out, options)
