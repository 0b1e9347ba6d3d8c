"""TensorRT backend: runs a raw engine plan (``M.engine`` + ``M.engine.json``) without torch.

A Jetson serving image carries no PyTorch, so device memory, the CUDA stream and the copies go
through cuda-python's runtime bindings (``cuda.bindings.runtime``, or ``cuda.cudart`` in older
cuda-python releases). TensorRT and cuda-python are imported only when a backend is built, so
``import serve.runtime.backends.tensorrt`` works on any machine and only construction fails, with a
message that says what is missing and how to get it.

The engine API used here is the named-tensor API of TensorRT 10.x, unchanged in 11.x:
``Runtime.deserialize_cuda_engine``, ``ICudaEngine.num_io_tensors`` / ``get_tensor_name`` /
``get_tensor_mode`` / ``get_tensor_dtype`` / ``get_tensor_profile_shape``,
``IExecutionContext.set_input_shape`` / ``get_tensor_shape`` / ``set_tensor_address`` /
``execute_async_v3``, and ``IRuntime.engine_host_code_allowed``. See ``export/TENSORRT.md`` for
the sources.

Before anything is deserialised, the plan's SHA-256 must be the one its sidecar records (the
bytes checked are the bytes deserialised), and a version-compatible plan, which embeds host
code that TensorRT runs in this process, loads only when the operator allowed that at serve
time (``allow_host_code``, from ``--allow-engine-host-code``): never because a sidecar says so.

None of the TensorRT calls has run on a GPU in this repository's CI; the GPU tests
(``tests/serve/test_serve_tensorrt.py``) run them where a GPU and TensorRT exist. The digest and
host-code checks run before TensorRT is imported and are tested on the CPU.
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serve.runtime.metadata import (
    INPUT_NAME,
    ModelMetadata,
    check_engine_digest,
    read_hashed,
    read_sidecar,
)

log = logging.getLogger(__name__)

MISSING_TENSORRT = (
    "TensorRT's Python package ('tensorrt') is not installed. On Jetson it comes with JetPack, "
    "for the system Python 3 (use that, or a virtual environment made with "
    "--system-site-packages). On x86_64 Linux: 'pip install tensorrt', which downloads "
    "from NVIDIA's index (pypi.nvidia.com) and so needs it reachable, or use an NGC container "
    "that ships it (nvcr.io/nvidia/tensorrt)."
)
STUBS_ONLY = (
    " Only type stubs are importable as 'tensorrt' here (tensorrt-stubs installs no library)."
)
MISSING_CUDA_PYTHON = (
    "cuda-python is not installed; the TensorRT runner uses it for device memory and streams "
    "(no PyTorch needed). Install it with 'pip install cuda-python', choosing the major "
    "version of your CUDA driver: 12.x for CUDA 12 (JetPack 6), 13.x for CUDA 13."
)
NO_GPU = (
    "no usable CUDA GPU: {reason}. TensorRT engines are built and run on an NVIDIA GPU with "
    "its driver installed ('nvidia-smi' lists it; on Jetson, JetPack installs the driver)."
)


class TensorRTUnavailable(ValueError):
    """TensorRT, cuda-python or a CUDA GPU is missing; the message says which and how to get it."""


class EngineMismatchError(ValueError):
    """An engine was built for another TensorRT version or GPU; the message says how to rebuild."""


class EngineRunError(ValueError):
    """An engine cannot be loaded or run with the given input (the message names the file)."""


HOST_CODE_FLAG = "--allow-engine-host-code"
HOST_CODE_VARIABLE = "DETECTOR_ALLOW_ENGINE_HOST_CODE"


def check_host_code_allowed(
    engine_path: str | Path, metadata: ModelMetadata, allow_host_code: bool
) -> None:
    """Refuse a version-compatible engine unless the operator allowed engine host code.

    A version-compatible plan carries the TensorRT lean runtime as host code, which TensorRT
    runs in this process when it deserialises the plan: whoever can write the engine file could
    run code in the server. So loading one is the operator's decision at serve time, never the
    sidecar's (a sidecar can be forged along with its engine).

    Raises:
        EngineRunError: naming the engine, the flag and the variable that allow it.
    """
    if metadata.extra.get("version_compatible") and not allow_host_code:
        raise EngineRunError(
            f"{engine_path} is a version-compatible engine: it embeds host code that TensorRT "
            f"would run inside this server. Serve it only if you trust whoever can write that "
            f"file, by passing {HOST_CODE_FLAG} (or {HOST_CODE_VARIABLE}=true); or rebuild "
            "it without --version-compatible on this device"
        )


@dataclass(frozen=True)
class GpuInfo:
    """The GPU an engine is built for or runs on: its name and compute capability (``"8.7"``)."""

    name: str
    compute_capability: str


def require_tensorrt() -> str:
    """Check that the real TensorRT Python package is importable; returns its version.

    Raises:
        TensorRTUnavailable: not installed, or only ``tensorrt-stubs`` (a namespace of ``.pyi``
            files without ``__version__``) is.
    """
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise TensorRTUnavailable(MISSING_TENSORRT) from exc
    version = getattr(trt, "__version__", None)
    if not isinstance(version, str) or not hasattr(trt, "Builder"):
        raise TensorRTUnavailable(MISSING_TENSORRT + STUBS_ONLY)
    return version


def cuda_runtime() -> Any:
    """cuda-python's CUDA runtime module (``cuda.bindings.runtime``; ``cuda.cudart`` before
    cuda-python 12.6 moved it).

    Raises:
        TensorRTUnavailable: cuda-python is not installed.
    """
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise TensorRTUnavailable(MISSING_CUDA_PYTHON)


def cuda_check(result: Any, what: str) -> Any:
    """Unpack a cuda-python call's ``(error, *values)`` tuple; raise on an error code.

    Returns ``None``, the one value, or the tuple of values.
    """
    cudart = cuda_runtime()
    error, values = result[0], tuple(result[1:])
    if int(error) != int(cudart.cudaError_t.cudaSuccess):
        _, name = cudart.cudaGetErrorName(error)
        _, text = cudart.cudaGetErrorString(error)
        raise EngineRunError(f"{what} failed: {_text(name)} ({_text(text)})")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def gpu_info(device: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device ``device`` (``cudaGetDeviceProperties``).

    Raises:
        TensorRTUnavailable: cuda-python missing, no driver, no device, or no device ``device``.
    """
    cudart = cuda_runtime()
    result = cudart.cudaGetDeviceCount()
    if int(result[0]) != int(cudart.cudaError_t.cudaSuccess):
        _, name = cudart.cudaGetErrorName(result[0])
        _, text = cudart.cudaGetErrorString(result[0])
        raise TensorRTUnavailable(NO_GPU.format(reason=f"{_text(name)}: {_text(text)}"))
    count = int(result[1])
    if count == 0:
        raise TensorRTUnavailable(NO_GPU.format(reason="the CUDA driver reports 0 devices"))
    if not 0 <= device < count:
        raise TensorRTUnavailable(
            f"there is no CUDA device {device}; this machine has {count} (0..{count - 1})"
        )
    props = cuda_check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = _text(props.name).split("\x00", 1)[0].strip()
    return GpuInfo(name=name, compute_capability=f"{props.major}.{props.minor}")


def unavailable_reason(device: int = 0) -> str | None:
    """Why TensorRT engines cannot run here (the first sentence of the error), or ``None`` when
    TensorRT, cuda-python and CUDA device ``device`` are all present."""
    try:
        require_tensorrt()
        gpu_info(device)
    except TensorRTUnavailable as exc:
        return str(exc).split(". ")[0]
    return None


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def engine_mismatch(
    built: dict[str, Any], trt_version: str, gpu: GpuInfo
) -> tuple[list[str], list[str]]:
    """Why an engine built as ``built`` (its sidecar's ``extra``) cannot run here.

    TensorRT plans run only on the TensorRT version that built them, unless built
    version-compatible, which then run on that version or later; and only on a GPU of the
    compute capability they were built for (no hardware-compatibility level is set).

    Returns:
        ``(problems, warnings)``: problems stop the engine from loading; warnings (another GPU
        model of the same compute capability) are only logged.
    """
    problems: list[str] = []
    warnings: list[str] = []
    built_version = built.get("tensorrt_version")
    if not built_version:
        problems.append("its sidecar records no TensorRT version (not built by us?)")
    elif built.get("version_compatible"):
        if _version_tuple(trt_version) < _version_tuple(str(built_version)):
            problems.append(
                f"it was built (version-compatible) with TensorRT {built_version}, which runs "
                f"only on that version or later; this machine has TensorRT {trt_version}"
            )
    elif str(built_version) != trt_version:
        problems.append(
            f"it was built with TensorRT {built_version}; this machine has TensorRT "
            f"{trt_version} (engines run only on the TensorRT version that built them)"
        )
    built_cc = built.get("compute_capability")
    built_gpu = built.get("gpu_name", "?")
    if not built_cc:
        problems.append("its sidecar records no GPU compute capability")
    elif str(built_cc) != gpu.compute_capability:
        problems.append(
            f"it was built for a GPU of compute capability {built_cc} ({built_gpu}); this GPU "
            f"is {gpu.name}, compute capability {gpu.compute_capability}"
        )
    elif built_gpu != gpu.name:
        warnings.append(
            f"it was built on {built_gpu}, this GPU is {gpu.name} (same compute capability "
            f"{gpu.compute_capability}); rebuild here if it fails or runs slowly"
        )
    return problems, warnings


def rebuild_command(engine_path: str | Path, metadata: ModelMetadata) -> str:
    """The ``detector export engine`` command that rebuilds an engine from its recorded ONNX."""
    extra = metadata.extra
    parts = ["detector export engine", f"--onnx {extra.get('onnx', 'M.onnx')}"]
    parts.append(f"--out {engine_path}")
    if metadata.precision != "fp32":
        parts.append(f"--precision {metadata.precision}")
    profile = extra.get("profile") or {}
    if profile:
        for key in ("min", "opt", "max"):
            parts.append(f"--{key}-batch {int(profile[key][0])}")
    if extra.get("version_compatible"):
        parts.append("--version-compatible")
    return " ".join(parts)


def check_engine_runs_here(
    engine_path: str | Path, metadata: ModelMetadata, trt_version: str, gpu: GpuInfo
) -> None:
    """Raise :class:`EngineMismatchError` (with the rebuild command) if the engine was built for
    another TensorRT version or GPU; log a warning for another GPU model of the same kind."""
    problems, warnings = engine_mismatch(metadata.extra, trt_version, gpu)
    for warning in warnings:
        log.warning("%s: %s", engine_path, warning)
    if problems:
        raise EngineMismatchError(
            f"{engine_path}: cannot run on this machine: "
            + "; ".join(problems)
            + f". Rebuild it on this device: {rebuild_command(engine_path, metadata)}"
        )


def _shape(dims: Any) -> tuple[int, ...]:
    """A TensorRT ``Dims`` (indexable, sized) as a tuple of ints."""
    return tuple(int(dims[i]) for i in range(len(dims)))


class TensorRTBackend:
    """A :class:`serve.runtime.backends.base.Backend` over a TensorRT engine.

    Args:
        path: the raw plan written by ``detector export engine`` (``M.engine``), with its
            ``M.engine.json`` sidecar beside it.
        device: CUDA device index.
        allow_host_code: let a version-compatible engine (one that embeds host code) load; the
            operator's choice (``--allow-engine-host-code``), off by default.

    Before TensorRT is touched, the engine file's SHA-256 is checked against its sidecar's and
    a version-compatible engine is refused without ``allow_host_code``. Device buffers are
    allocated once for the largest batch of the engine's optimisation profile; :meth:`infer`
    takes any batch inside the profile. One execution context and one set of buffers serve all
    calls, so :meth:`infer` holds a lock (server threads queue).
    """

    name = "tensorrt"

    def __init__(self, path: str | Path, device: int = 0, allow_host_code: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise EngineRunError(f"{self.path}: no such engine file")
        self.metadata: ModelMetadata = read_sidecar(self.path)
        plan, digest = read_hashed(self.path)  # these bytes, checked, are what gets deserialised
        check_engine_digest(self.path, self.metadata, digest)
        check_host_code_allowed(self.path, self.metadata, allow_host_code)
        self.allow_host_code = allow_host_code
        trt_version = require_tensorrt()
        self._cudart = cuda_runtime()
        self.gpu = gpu_info(device)
        check_engine_runs_here(self.path, self.metadata, trt_version, self.gpu)
        self._buffers: dict[str, int] = {}
        self._stream: Any = None
        self._lock = threading.Lock()
        self.device = device
        cuda_check(self._cudart.cudaSetDevice(device), "cudaSetDevice")
        self._load(trt_version, plan)

    def _load(self, trt_version: str, plan: bytearray) -> None:
        import tensorrt as trt

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        # off by default in TensorRT; on only by the operator's choice (check_host_code_allowed)
        self._runtime.engine_host_code_allowed = bool(
            self.allow_host_code and self.metadata.extra.get("version_compatible")
        )
        engine = self._runtime.deserialize_cuda_engine(plan)
        del plan
        if engine is None:
            raise EngineRunError(
                f"{self.path}: TensorRT {trt_version} could not deserialize it (corrupt, "
                f"truncated, or built by another TensorRT); rebuild it on this device: "
                f"{rebuild_command(self.path, self.metadata)}"
            )
        self.engine = engine
        context = engine.create_execution_context()
        if context is None:
            raise EngineRunError(f"{self.path}: could not create an execution context")
        self.context = context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if inputs != [INPUT_NAME]:
            raise EngineRunError(f"{self.path}: expected one input '{INPUT_NAME}', has {inputs}")
        self.output_names = [n for n in names if n != INPUT_NAME]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        low, _, high = engine.get_tensor_profile_shape(INPUT_NAME, 0)
        self.min_shape = _shape(low)
        self.max_shape = _shape(high)
        self._stream = cuda_check(self._cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._allocate()

    def _allocate(self) -> None:
        """Device buffers sized for the profile's largest batch, bound by tensor address."""
        if not self.context.set_input_shape(INPUT_NAME, self.max_shape):
            raise EngineRunError(f"{self.path}: the engine rejects its own max shape")
        for name in (INPUT_NAME, *self.output_names):
            shape = _shape(self.context.get_tensor_shape(name))
            if any(dim < 0 for dim in shape):
                raise EngineRunError(
                    f"{self.path}: output '{name}' has a data-dependent shape {shape}; only "
                    "fixed-size outputs (raw, or NMS padded to max detections) are supported"
                )
            nbytes = int(np.prod(shape)) * self.dtypes[name].itemsize
            pointer = cuda_check(self._cudart.cudaMalloc(max(nbytes, 1)), f"cudaMalloc({name})")
            self._buffers[name] = int(pointer)
            if not self.context.set_tensor_address(name, int(pointer)):
                raise EngineRunError(f"{self.path}: set_tensor_address('{name}') failed")

    def _check_batch(self, images: np.ndarray) -> None:
        if images.ndim != 4 or tuple(images.shape[1:]) != self.max_shape[1:]:
            raise EngineRunError(
                f"{self.path}: input must be [B, {', '.join(map(str, self.max_shape[1:]))}], "
                f"got {list(images.shape)}"
            )
        low, high = self.min_shape[0], self.max_shape[0]
        if not low <= images.shape[0] <= high:
            raise EngineRunError(
                f"{self.path}: batch {images.shape[0]} is outside the engine's optimisation "
                f"profile ({low}..{high}); rebuild with --min-batch/--max-batch covering it"
            )

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``images`` ``[B, 3, H, W]`` float32 -> ``{"output": [B, N, 5 + C]}`` or
        ``num_dets [B, 1]``, ``boxes [B, K, 4]``, ``scores [B, K]``, ``classes [B, K]``."""
        self._check_batch(images)
        with self._lock:
            return self._infer(images)

    def _infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        cudart = self._cudart
        # the CUDA runtime's current device is per host thread; server threads start on 0
        cuda_check(cudart.cudaSetDevice(self.device), "cudaSetDevice")
        batch = np.ascontiguousarray(images, dtype=self.dtypes[INPUT_NAME])
        if not self.context.set_input_shape(INPUT_NAME, tuple(batch.shape)):
            raise EngineRunError(f"{self.path}: set_input_shape{tuple(batch.shape)} failed")
        outputs = {
            n: np.empty(_shape(self.context.get_tensor_shape(n)), dtype=self.dtypes[n])
            for n in self.output_names
        }
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_check(
            cudart.cudaMemcpyAsync(
                self._buffers[INPUT_NAME], batch.ctypes.data, batch.nbytes, to_device, self._stream
            ),
            "cudaMemcpyAsync(images)",
        )
        if not self.context.execute_async_v3(int(self._stream)):
            raise EngineRunError(f"{self.path}: execute_async_v3 failed (see TensorRT's log)")
        for name, array in outputs.items():
            cuda_check(
                cudart.cudaMemcpyAsync(
                    array.ctypes.data, self._buffers[name], array.nbytes, to_host, self._stream
                ),
                f"cudaMemcpyAsync({name})",
            )
        cuda_check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return outputs

    def close(self) -> None:
        """Free the device buffers and the stream; drop the context and engine."""
        for pointer in self._buffers.values():
            self._cudart.cudaFree(pointer)
        self._buffers.clear()
        if self._stream is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self.context = None  # type: ignore[assignment]
        self.engine = None  # type: ignore[assignment]

    def __del__(self) -> None:
        if getattr(self, "_buffers", None) or getattr(self, "_stream", None) is not None:
            try:
                self.close()
            except Exception:  # noqa: BLE001 - interpreter shutdown; nothing left to report to
                pass
