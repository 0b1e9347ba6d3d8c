"""PyTorch backend: runs a ``detector train`` checkpoint (``.pt``/``.pth``) behind the same
:class:`serve.runtime.backends.base.Backend` interface as ONNX Runtime and TensorRT.

This is the only module of ``serve`` that imports torch; :mod:`serve.runtime.predictor` imports it
only when
a checkpoint is asked for, so serving ONNX or engine files stays torch-free.

The model is built from the checkpoint, batch norm is folded into the convolutions
(``detector.models.fuse_model``) and it runs in evaluation mode. On a GPU the network runs in
float16 by default; the decode (grid, ``exp``, sigmoid) stays in float32, as in an FP16 ONNX
export, so box pixels keep their precision. With ``cuda_graphs`` each batch shape is captured
once into a CUDA graph with static input and output buffers and replayed afterwards, which
removes the per-layer launch overhead that dominates small models at small batches.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.core.preprocess import PreprocessSpec, as_size
from detector.models import (
    CheckpointError,
    checkpoint_input_size,
    fuse_model,
    model_from_checkpoint,
)
from detector.models.decode import decode_outputs
from serve.runtime.metadata import RAW_OUTPUT, ModelMetadata

log = logging.getLogger(__name__)

# warm-up runs on a side stream before a graph is captured (cuDNN picks its algorithms there)
GRAPH_WARMUP = 3
# channels-last on the CPU: nano@416 on the AMD EPYC here took 0.69-0.78x (batch 1) and
# 0.73-0.83x (batch 8) of the NCHW time in two runs, faster in 39 of 41 interleaved pairs
# (benchmarks/backends_bench.md)
CPU_CHANNELS_LAST = True


class TorchModelError(ValueError):
    """A checkpoint cannot be served (missing, corrupt, inconsistent); the message names it."""


class TorchDeviceError(ValueError):
    """The device asked for does not exist here (e.g. ``cuda`` without a GPU)."""


def resolve_device(device: str | int | None) -> torch.device:
    """The device to run on.

    ``"auto"``/``None``: the first CUDA GPU if there is one, else the CPU. An ``int`` is a GPU
    index used the same way (the server's ``--device`` is a GPU index): that GPU when CUDA is
    available, else the CPU. ``"cpu"``, ``"cuda"``, ``"cuda:1"``: exactly that.

    Raises:
        TorchDeviceError: a CUDA device without CUDA, a GPU index beyond the GPUs there are, or
            a name torch does not know.
    """
    cuda = torch.cuda.is_available()
    if device is None or device == "auto":
        return torch.device("cuda", 0) if cuda else torch.device("cpu")
    if isinstance(device, int) or (isinstance(device, str) and device.isdigit()):
        return _check_index(torch.device("cuda", int(device))) if cuda else torch.device("cpu")
    try:
        resolved = torch.device(str(device))
    except RuntimeError as exc:
        raise TorchDeviceError(
            f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)"
        ) from exc
    if resolved.type == "cuda":
        if not cuda:
            raise TorchDeviceError(
                f"device {device!r} asked for, but torch sees no CUDA GPU "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
                "use device=cpu or auto"
            )
        return _check_index(torch.device("cuda", resolved.index or 0))
    if resolved.type != "cpu":
        raise TorchDeviceError(f"device {device!r}: only cpu and cuda are supported")
    return resolved


def _check_index(device: torch.device) -> torch.device:
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise TorchDeviceError(f"GPU {device.index} asked for, but this machine has {count}")
    return device


class _Graph:
    """One captured CUDA graph: a static input ``[B, 3, H, W]`` float32 and its output."""

    def __init__(self, forward: Any, shape: tuple[int, ...], device: torch.device,
                 pool: Any) -> None:  # fmt: skip
        self.input = torch.zeros(shape, dtype=torch.float32, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP):
                forward(self.input)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.output = forward(self.input)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.input.copy_(images, non_blocking=True)
        self.graph.replay()
        return self.output


class TorchBackend:
    """A :class:`serve.runtime.backends.base.Backend` over a checkpoint written by ``detector
    train``
    (or an official YOLOX ``.pth`` with ``model_name``).

    Args:
        path: the ``.pt``/``.pth`` checkpoint.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``
            or a GPU index (see :func:`resolve_device`).
        half: run the network in float16 (default: on CUDA yes, on the CPU no).
        cuda_graphs: capture one CUDA graph per input shape and replay it (CUDA only).
        imgsz: input size ``N`` or ``(H, W)``, multiples of 32 (default: the checkpoint's).
        model_name: the architecture, needed only for official YOLOX ``.pth`` files.
        channels_last: NHWC memory layout (default: on CUDA yes, on the CPU
            :data:`CPU_CHANNELS_LAST`, as measured).
        threads: torch intra-op threads (``torch.set_num_threads``, which is process-wide;
            default: torch's choice).

    Raises:
        TorchModelError: the checkpoint is missing, corrupt or inconsistent.
        TorchDeviceError: the device does not exist here, or ``cuda_graphs`` on the CPU.
    """

    name = "torch"

    def __init__(
        self,
        path: str | Path,
        device: str | int | None = "auto",
        half: bool | None = None,
        cuda_graphs: bool = False,
        imgsz: int | tuple[int, int] | None = None,
        model_name: str | None = None,
        channels_last: bool | None = None,
        threads: int | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise TorchModelError(f"{self.path}: no such checkpoint file")
        self.device = resolve_device(device)
        cuda = self.device.type == "cuda"
        if cuda_graphs and not cuda:
            raise TorchDeviceError(
                f"{self.path}: cuda_graphs needs a CUDA device, and this one runs on {self.device}"
            )
        if threads:
            torch.set_num_threads(int(threads))
        self.half = cuda if half is None else bool(half)
        self.cuda_graphs = bool(cuda_graphs)
        self.channels_last = (cuda or CPU_CHANNELS_LAST) if channels_last is None else channels_last
        try:
            model, meta = model_from_checkpoint(self.path, name=model_name)
        except CheckpointError as exc:
            raise TorchModelError(str(exc)) from exc
        size = as_size(imgsz) if imgsz else as_size(checkpoint_input_size(model, meta))
        stride = max(model.strides)
        if min(size) <= 0 or size[0] % stride or size[1] % stride:
            raise TorchModelError(
                f"{self.path}: input size must be positive multiples of {stride}, "
                f"got {size[0]}x{size[1]}"
            )
        names = meta.get("class_names") or [str(i) for i in range(model.num_classes)]
        if len(names) != model.num_classes:
            raise TorchModelError(
                f"{self.path}: meta lists {len(names)} class names for a "
                f"{model.num_classes}-class model"
            )
        model = fuse_model(model.eval()).to(self.device)
        if self.half:
            model = model.half()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its kernels
        self.metadata: ModelMetadata = ModelMetadata(
            model_name=model.name,
            class_names=tuple(str(n) for n in names),
            input_size=size,
            strides=tuple(int(s) for s in model.strides),
            precision="fp16" if self.half else "fp32",
            layout="raw",
            batch=None,
            preprocess=PreprocessSpec(*size),
            extra={"device": str(self.device), "cuda_graphs": self.cuda_graphs},
        )
        self._graphs: dict[tuple[int, ...], _Graph] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self._lock = threading.Lock()

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` float32 on the device -> ``[B, N, 5 + C]`` float32."""
        x = images.half() if self.half else images
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        maps = self.model.forward_raw(x)
        return decode_outputs([m.float() for m in maps], self.model.strides)

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``images [B, 3, H, W]`` float32 (BGR, 0-255, letterboxed) ->
        ``{"output": [B, N, 5 + C] float32}``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        with self._lock, torch.inference_mode():
            if self.device.type == "cuda":
                batch = batch.pin_memory()  # from torch's caching host allocator
            if self.cuda_graphs:
                shape = tuple(batch.shape)
                if shape not in self._graphs:
                    log.info("%s: capturing a CUDA graph for input %s", self.path.name, shape)
                    self._graphs[shape] = _Graph(self._forward, shape, self.device, self._pool)
                output = self._graphs[shape](batch)  # host -> the graph's static input
            else:
                output = self._forward(batch.to(self.device, non_blocking=True))
            # a copy, made before any other graph replays: the graphs share one memory pool,
            # so a graph's output is only valid until the next replay (of any shape)
            result = output.cpu().numpy()
        return {RAW_OUTPUT: result}

    def close(self) -> None:
        """Drop the model and the captured graphs (and their GPU memory)."""
        with self._lock:
            self._graphs.clear()
            self.model = None  # type: ignore[assignment]
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
