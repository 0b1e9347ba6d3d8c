"""``detector export torch2trt``: YOLOX's own TensorRT path, through NVIDIA-AI-IOT/torch2trt.

torch2trt is not on PyPI and converts a live PyTorch module layer by layer with TensorRT's
network API. Its code (``torch2trt/torch2trt.py`` and ``calibration.py`` in
NVIDIA-AI-IOT/torch2trt, as read for this module) calls APIs that TensorRT removed:

- removed in TensorRT 10.0: ``IBuilderConfig.max_workspace_size``, ``Builder.max_batch_size``,
  ``Builder.build_engine``, ``ICudaEngine.get_binding_index`` / ``get_binding_dtype``,
  ``IExecutionContext.set_binding_shape`` / ``execute_async`` (TensorRT 8.x -> 10.x migration
  guide, "Removed Python APIs");
- removed in TensorRT 11.0: ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH``,
  ``BuilderFlag.FP16`` / ``INT8``, ``IBuilderConfig.int8_calibrator`` and the ``IInt8*``
  calibrator classes it subclasses (10.x -> 11.x migration guide).

So it works with the TensorRT it was written for, and fails elsewhere. We do not guess from
version numbers: we run it, and turn the ``AttributeError`` it raises on a removed API into an
error that names the API, the installed TensorRT, and the way that works on TensorRT 10 and 11
(``detector export onnx`` then ``detector export engine``). On success the engine is written the
same way as ``export engine`` writes it: the raw plan (``model_trt.engine.serialize()``) and a
``M.engine.json`` sidecar. None of this has run here: it needs a CUDA GPU, TensorRT and
torch2trt.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

from detector.core.atomic import write_atomic
from export.engine import Profile
from serve.runtime.backends.tensorrt import TensorRTUnavailable, gpu_info, require_tensorrt
from serve.runtime.metadata import ModelMetadata, write_sidecar

log = logging.getLogger(__name__)

INSTALL_TORCH2TRT = (
    "install it from source: 'git clone https://github.com/NVIDIA-AI-IOT/torch2trt && cd "
    "torch2trt && pip install .' (it is not on PyPI)"
)
USE_ENGINE = (
    "The path that works on TensorRT 10.x and 11.x is 'detector export onnx --weights W --out "
    "M.onnx [--half]' then 'detector export engine --onnx M.onnx --out M.engine'."
)


class Torch2TrtError(ValueError):
    """torch2trt, TensorRT, CUDA or a compatible pairing of them is missing; says which."""


def require_torch2trt() -> None:
    """Raise :class:`Torch2TrtError` (how to install it) if torch2trt is not installed."""
    if importlib.util.find_spec("torch2trt") is None:
        raise Torch2TrtError(f"torch2trt is not installed; {INSTALL_TORCH2TRT}. {USE_ENGINE}")


def import_torch2trt(trt_version: str) -> Any:
    """The ``torch2trt`` function, or :class:`Torch2TrtError` saying why it cannot be used."""
    try:
        module = importlib.import_module("torch2trt")
    except ModuleNotFoundError as exc:
        if exc.name != "torch2trt":
            raise Torch2TrtError(
                f"torch2trt cannot be imported: it needs '{exc.name}', which is missing"
            ) from exc
        raise Torch2TrtError(
            f"torch2trt is not installed; {INSTALL_TORCH2TRT}. {USE_ENGINE}"
        ) from exc
    except AttributeError as exc:  # its module level touches TensorRT APIs (calibrators)
        raise Torch2TrtError(removed_api_message(exc, trt_version)) from exc
    return module.torch2trt


def removed_api_message(exc: BaseException, trt_version: str) -> str:
    """Explain an ``AttributeError`` raised inside torch2trt as a TensorRT API it lacks."""
    return (
        f"torch2trt does not work with the installed TensorRT {trt_version}: it calls an API "
        f"this TensorRT does not have ({exc}). torch2trt was written for TensorRT 8.x; TensorRT "
        f"10.0 removed its build and binding APIs and 11.0 its precision flags and "
        f"calibrators. {USE_ENGINE}"
    )


def export_torch2trt(
    weights: str | Path,
    out: str | Path,
    model_name: str | None = None,
    imgsz: int | None = None,
    half: bool = False,
    workspace_gib: float = 2.0,
) -> Path:
    """Convert the checkpoint's eval model with torch2trt; write ``out`` (raw plan) + sidecar.

    The engine has a fixed batch of 1, input ``images`` ``[1, 3, H, W]`` float32 and output
    ``output`` ``[1, N, 5 + C]`` (decoded, the eval model's layout).

    Raises:
        Torch2TrtError / TensorRTUnavailable: what is missing, and how to get it.
    """
    import torch

    from detector.models.checkpoint import load_inference_model

    require_torch2trt()
    trt_version = require_tensorrt()
    if not torch.cuda.is_available():
        raise TensorRTUnavailable(
            "torch2trt converts a CUDA PyTorch model, and torch.cuda.is_available() is False "
            "(no GPU, or a CPU-only PyTorch build)"
        )
    convert = import_torch2trt(trt_version)
    gpu = gpu_info(0)
    model, spec = load_inference_model(weights, model_name, imgsz)
    shape = (1, 3, *spec.input_size)
    model = model.cuda().eval()
    example = torch.zeros(shape, device="cuda")
    try:
        with torch.no_grad():
            model_trt = convert(
                model,
                [example],
                input_names=["images"],
                output_names=["output"],
                fp16_mode=half,
                max_workspace_size=int(workspace_gib * (1 << 30)),
            )
    except AttributeError as exc:
        raise Torch2TrtError(removed_api_message(exc, trt_version)) from exc
    if getattr(model_trt, "engine", None) is None:
        raise Torch2TrtError(f"torch2trt built no engine from {weights} (see TensorRT's log)")
    out = Path(out)
    write_atomic(out, bytes(model_trt.engine.serialize()))
    profile = Profile(min=shape, opt=shape, max=shape)
    metadata = ModelMetadata(
        model_name=spec.model_name,
        class_names=spec.class_names,
        input_size=spec.input_size,
        strides=tuple(model.strides),
        precision="fp16" if half else "fp32",
        batch=1,
        extra={
            "tensorrt_version": trt_version,
            "gpu_name": gpu.name,
            "compute_capability": gpu.compute_capability,
            "precision": "fp16" if half else "fp32",
            "profile": profile.to_dict(),
            "builder": "torch2trt",
            "weights": str(weights),
        },
    )
    write_sidecar(out, metadata)
    log.info("wrote %s with torch2trt (TensorRT %s, %s)", out, trt_version, gpu.name)
    return out
