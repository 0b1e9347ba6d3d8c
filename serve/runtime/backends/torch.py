"""PyTorch backend: runs a ``detector train`` checkpoint (``.pt``/``.pth``) behind the same
:class:`serve.runtime.backends.base.Backend` interface as ONNX Runtime and TensorRT.

This is the only module of ``serve`` that imports torch; :mod:`serve.runtime.predictor` imports
it only when a checkpoint is asked for, so serving ONNX or engine files stays torch-free. The
checkpoint becomes a model in :func:`detector.models.load_inference_model` (class names and input
size included), and the device in :func:`detector.models.device.resolve_device`, as for
``detector eval`` and training.

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

from detector.models import CheckpointError, fuse_model, load_inference_model
from detector.models.decode import decode_outputs
from detector.models.device import DeviceError, resolve_device
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


TorchDeviceError = DeviceError
"""The device asked for does not exist here (e.g. ``cuda`` without a GPU): the error of
:func:`detector.models.device.resolve_device`, the one device rule of training and serving."""


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
    """A :class:`serve.runtime.backends.base.Backend` over a checkpoint written by
    ``detector train`` (or an official YOLOX ``.pth`` with ``model_name``).

    Args:
        path: the ``.pt``/``.pth`` checkpoint.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``
            or a GPU index (see :func:`detector.models.device.resolve_device`).
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
            model, spec = load_inference_model(self.path, model_name, imgsz)
        except CheckpointError as exc:
            raise TorchModelError(str(exc)) from exc
        model = fuse_model(model.eval()).to(self.device)
        if self.half:
            model = model.half()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its kernels
        self.metadata: ModelMetadata = ModelMetadata(
            model_name=spec.model_name,
            class_names=spec.class_names,
            input_size=spec.input_size,
            strides=tuple(int(s) for s in model.strides),
            precision="fp16" if self.half else "fp32",
            layout="raw",
            batch=None,
            preprocess=spec.preprocess,
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
