"""Build a TensorRT engine from one of our ONNX files, on TensorRT 10.x and 11.x.

The two lines differ in how precision is chosen (see ``export/TENSORRT.md`` for the sources):

- TensorRT 10.x (JetPack 6: 10.3, JetPack 7: 10.13) builds weakly typed networks by default;
  ``BuilderFlag.FP16`` lets it pick FP16 kernels, ``BuilderFlag.INT8`` (with FP16 as fallback)
  makes it honour the Q/DQ nodes of an INT8 ONNX. We never use a calibrator (deprecated since
  10.1): INT8 comes from ``detector export int8``'s Q/DQ ONNX.
- TensorRT 11.x builds every network strongly typed and has no precision flags: the precision is
  the ONNX's own (``detector export onnx --half`` for FP16, ``detector export int8`` for INT8).

Which line is installed is read from ``tensorrt.__version__`` (:func:`plan_build`), never
assumed. The engine file is the raw serialized plan (what ``trtexec --loadEngine`` and Triton
load); its metadata goes to the ``M.engine.json`` sidecar (:mod:`serve.runtime.metadata`),
written atomically after the engine and recording the engine's SHA-256, so the runner refuses an
engine that is not the one its sidecar describes. A ``--version-compatible`` engine embeds host
code; the runner loads one only when the operator allows it (``--allow-engine-host-code``).

Nothing in this module has run on a GPU in this repository's CI (no GPU there); the GPU tests in
``tests/export/test_export_engine.py`` run it where TensorRT and a GPU exist.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detector.core.atomic import write_atomic
from serve.runtime.backends.tensorrt import (
    GpuInfo,
    TensorRTUnavailable,
    gpu_info,
    require_tensorrt,
)
from serve.runtime.metadata import (
    INPUT_NAME,
    PRECISIONS,
    ModelMetadata,
    read_onnx_metadata,
    write_sidecar,
)

log = logging.getLogger(__name__)

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
SUPPORTED_MAJORS = (10, 11)

__all__ = [
    "BuildPlan",
    "EngineBuildError",
    "OnnxFacts",
    "Profile",
    "TensorRTUnavailable",
    "build_engine",
    "compare_with_onnx",
    "onnx_facts",
    "plan_build",
    "profile_shapes",
]


class EngineBuildError(ValueError):
    """The engine cannot be built from these inputs; the message names the file and the fix."""


@dataclass(frozen=True)
class BuildPlan:
    """What to ask of the installed TensorRT for one build.

    Attributes:
        trt_version: ``tensorrt.__version__``.
        strongly_typed: the network is strongly typed (always on 11.x; precision = the ONNX's).
        network_flags: ``NetworkDefinitionCreationFlag`` names to pass to ``create_network``.
        builder_flags: ``BuilderFlag`` names to set (precision flags exist only on 10.x).
    """

    trt_version: str
    strongly_typed: bool
    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]


@dataclass(frozen=True)
class Profile:
    """Optimisation profile of the ``images`` input: min / opt / max ``[B, 3, H, W]``."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass(frozen=True)
class OnnxFacts:
    """What the build needs from the ONNX graph: ``images`` shape (``None`` = dynamic dim) and
    whether it holds Q/DQ nodes."""

    input_shape: tuple[int | None, ...]
    has_qdq: bool


def _major(trt_version: str) -> int:
    head = trt_version.split(".", 1)[0]
    if not head.isdigit():
        raise EngineBuildError(f"cannot read the TensorRT version {trt_version!r}")
    return int(head)


def plan_build(trt_version: str, precision: str, onnx_precision: str) -> BuildPlan:
    """The flags for building a ``precision`` engine from an ``onnx_precision`` ONNX.

    Args:
        trt_version: the installed ``tensorrt.__version__`` (e.g. ``"10.3.0.30"``).
        precision: requested engine precision, ``fp32`` / ``fp16`` / ``int8``.
        onnx_precision: the ONNX's (``int8`` when it has Q/DQ nodes, else its metadata's).

    Raises:
        EngineBuildError: unsupported TensorRT line, or an ONNX that cannot give that precision
            on this line (with the command that makes the right ONNX).
    """
    if precision not in PRECISIONS:
        raise EngineBuildError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    major = _major(trt_version)
    if major < SUPPORTED_MAJORS[0]:
        raise EngineBuildError(
            f"TensorRT {trt_version} is too old: engines are built with TensorRT 10.x (JetPack 6 "
            "and 7) or 11.x; upgrade TensorRT"
        )
    if onnx_precision == "int8" and precision != "int8":
        raise EngineBuildError(
            f"the ONNX is INT8 (Q/DQ nodes) but --precision {precision} was asked; build it with "
            "--precision int8, or build from the float ONNX"
        )
    if precision == "int8" and onnx_precision != "int8":
        raise EngineBuildError(
            "--precision int8 needs an INT8 ONNX with Q/DQ nodes (no calibrator is used): make "
            "it with 'detector export int8 --onnx M.onnx --calib DATA --out M.int8.onnx'"
        )
    if major == 10:
        # EXPLICIT_BATCH is deprecated and ignored since 10.0 (networks are always explicit
        # batch), so no network flag; weak typing lets the precision flags act.
        if onnx_precision == "fp16" and precision == "fp32":
            raise EngineBuildError(
                "the ONNX has FP16 weights (--half) but --precision fp32 was asked; use "
                "--precision fp16, or build from the FP32 ONNX"
            )
        flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}[precision]
        return BuildPlan(trt_version, strongly_typed=False, network_flags=(), builder_flags=flags)
    if major > SUPPORTED_MAJORS[-1]:
        log.warning(
            "TensorRT %s is newer than the 11.x line this was written against; building as on "
            "11.x (strongly typed, no precision flags)",
            trt_version,
        )
    # 11.x: strongly typed always (NetworkDefinitionCreationFlag.STRONGLY_TYPED is deprecated
    # and ignored, EXPLICIT_BATCH is gone); BuilderFlag.FP16/INT8 are removed.
    if precision != onnx_precision:
        how = {
            "fp16": "'detector export onnx --half' (FP16 weights, float32 inputs and outputs)",
            "fp32": "'detector export onnx' without --half",
        }.get(precision, "")
        raise EngineBuildError(
            f"TensorRT {trt_version} builds every network strongly typed: the engine's "
            f"precision is the ONNX's, which is {onnx_precision}, not {precision}. Build from "
            f"an ONNX made with {how}"
        )
    return BuildPlan(trt_version, strongly_typed=True, network_flags=(), builder_flags=())


def onnx_facts(onnx_path: str | Path) -> OnnxFacts:
    """Read the ``images`` input shape and look for Q/DQ nodes (weights are not loaded)."""
    import onnx

    path = Path(onnx_path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types on bad bytes
        raise EngineBuildError(f"{path}: not a readable ONNX file: {exc}") from exc
    inputs = {i.name: i for i in model.graph.input}
    if INPUT_NAME not in inputs:
        raise EngineBuildError(f"{path}: no input named '{INPUT_NAME}' (has {sorted(inputs)})")
    dims = inputs[INPUT_NAME].type.tensor_type.shape.dim
    shape = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in dims)
    has_qdq = any(node.op_type in QDQ_OPS for node in model.graph.node)
    return OnnxFacts(input_shape=shape, has_qdq=has_qdq)


def profile_shapes(
    input_shape: tuple[int | None, ...],
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    source: str = "ONNX",
) -> Profile:
    """The optimisation profile for an ``images`` input of ``input_shape`` (``None``: dynamic).

    A fixed-batch ONNX allows only its own batch (any batch flag must equal it); a dynamic one
    takes ``min <= opt <= max`` (defaults: min 1, max = max(min, opt, 1), opt = max).

    Raises:
        EngineBuildError: not ``[B, 3, H, W]`` with fixed H, W, or batch flags that do not fit.
    """
    if len(input_shape) != 4 or input_shape[1] != 3:
        raise EngineBuildError(f"{source}: '{INPUT_NAME}' must be [B, 3, H, W], is {input_shape}")
    batch, _, height, width = input_shape
    if height is None or width is None:
        raise EngineBuildError(
            f"{source}: '{INPUT_NAME}' has a dynamic height or width {input_shape}; export the "
            "ONNX with a fixed --imgsz"
        )
    given = {"--min-batch": min_batch, "--opt-batch": opt_batch, "--max-batch": max_batch}
    for flag, value in given.items():
        if value is not None and value < 1:
            raise EngineBuildError(f"{flag} must be at least 1, got {value}")
    if batch is not None:
        wrong = {flag: v for flag, v in given.items() if v is not None and v != batch}
        if wrong:
            shown = ", ".join(f"{flag} {v}" for flag, v in wrong.items())
            raise EngineBuildError(
                f"{source} has a fixed batch of {batch}, so the engine's batch is {batch} "
                f"({shown} asked); export the ONNX with --dynamic for a batch range"
            )
        low = opt = high = batch
    else:
        low = min_batch or 1
        high = max_batch or max(low, opt_batch or 1)
        opt = opt_batch or high
        if not low <= opt <= high:
            raise EngineBuildError(
                f"batch sizes must satisfy min <= opt <= max, got min {low}, opt {opt}, max "
                f"{high} (--min-batch defaults to 1, --max-batch to the larger of min and opt, "
                "--opt-batch to max)"
            )
    return Profile(
        min=(low, 3, height, width), opt=(opt, 3, height, width), max=(high, 3, height, width)
    )


def _parser_errors(parser: Any, onnx_path: Path) -> list[str]:
    """Every error the ONNX parser recorded, as ``file: node N (name, op): description``."""
    lines = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        where = f"node {error.node()}"
        extra = [
            str(getattr(error, attr)())
            for attr in ("node_name", "node_operator")
            if hasattr(error, attr) and str(getattr(error, attr)())
        ]
        if extra:
            where += f" ({', '.join(extra)})"
        lines.append(
            f"{onnx_path}: {where}: {error.desc()} [parser {error.file()}:{error.line()} "
            f"{error.func()}, code {error.code()}]"
        )
    return lines


def build_engine(
    onnx_path: str | Path,
    out: str | Path,
    precision: str = "fp32",
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    workspace_gib: float = 2.0,
    timing_cache: str | Path | None = None,
    version_compatible: bool = False,
) -> Path:
    """Build ``out`` (raw TensorRT plan) and ``out.json`` (metadata sidecar, with the plan's
    SHA-256) from ``onnx_path``; both are written atomically, the engine first.

    Args:
        onnx_path: an ONNX written by ``detector export onnx`` / ``export int8``.
        out: engine path (``M.engine``).
        precision: ``fp32``, ``fp16`` or ``int8`` (see the module docstring per TensorRT line).
        min_batch, opt_batch, max_batch: batch range of the optimisation profile (dynamic-batch
            ONNX only; a fixed-batch ONNX gives its own batch).
        workspace_gib: builder workspace memory pool limit, GiB.
        timing_cache: file to load the timing cache from (if it exists) and save it to.
        version_compatible: build a version-compatible plan (runs on later TensorRT too; it
            embeds host code, so serving it needs ``--allow-engine-host-code``).

    Returns:
        ``out``.

    Raises:
        TensorRTUnavailable: TensorRT, cuda-python or a GPU is missing (says how to get it).
        EngineBuildError: a bad ONNX, profile or precision, or a failed parse/build.
    """
    onnx_path, out = Path(onnx_path), Path(out)
    metadata = read_onnx_metadata(onnx_path)
    facts = onnx_facts(onnx_path)
    profile = profile_shapes(facts.input_shape, min_batch, opt_batch, max_batch, str(onnx_path))
    if facts.has_qdq:
        onnx_precision = "int8"
    elif metadata.precision == "int8":
        raise EngineBuildError(
            f"{onnx_path}: its metadata says int8 but the graph has no QuantizeLinear/"
            "DequantizeLinear nodes"
        )
    else:
        onnx_precision = metadata.precision
    target = (metadata.extra.get("int8") or {}).get("target", "tensorrt")
    if onnx_precision == "int8" and target != "tensorrt":
        raise EngineBuildError(
            f"{onnx_path}: this INT8 ONNX was quantized with --target {target}; TensorRT takes "
            "only symmetric signed INT8 Q/DQ: make it with 'detector export int8 ... --target "
            "tensorrt'"
        )
    if workspace_gib <= 0:
        raise EngineBuildError(f"--workspace must be positive GiB, got {workspace_gib}")
    trt_version = require_tensorrt()
    gpu = gpu_info(0)
    plan = plan_build(trt_version, precision, onnx_precision)
    serialized = _build(onnx_path, plan, profile, workspace_gib, timing_cache, version_compatible)
    write_atomic(out, serialized)
    write_sidecar(
        out,
        engine_metadata(metadata, plan, gpu, precision, profile, onnx_path, version_compatible),
    )
    log.info("wrote %s (%.1f MB) and its sidecar", out, out.stat().st_size / 1e6)
    return out


def engine_metadata(
    metadata: ModelMetadata,
    plan: BuildPlan,
    gpu: GpuInfo,
    precision: str,
    profile: Profile,
    onnx_path: Path,
    version_compatible: bool,
) -> ModelMetadata:
    """The ONNX's metadata plus what the engine was built with and for (the sidecar)."""
    return metadata.with_updates(
        precision=precision,
        batch=profile.min[0] if profile.min[0] == profile.max[0] else None,
        extra={
            "tensorrt_version": plan.trt_version,
            "gpu_name": gpu.name,
            "compute_capability": gpu.compute_capability,
            "precision": precision,
            "profile": profile.to_dict(),
            "strongly_typed": plan.strongly_typed,
            "builder_flags": list(plan.builder_flags),
            "version_compatible": version_compatible,
            "onnx": str(onnx_path),
        },
    )


def _build(
    onnx_path: Path,
    plan: BuildPlan,
    profile: Profile,
    workspace_gib: float,
    timing_cache: str | Path | None,
    version_compatible: bool,
) -> bytes:
    """Parse, configure and build; returns the serialized plan."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = _parser_errors(parser, onnx_path) or [f"{onnx_path}: parse failed (no details)"]
        raise EngineBuildError(
            f"TensorRT {plan.trt_version}'s ONNX parser rejected {onnx_path}:\n  "
            + "\n  ".join(errors)
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    for name in plan.builder_flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is None:
            raise EngineBuildError(f"TensorRT {plan.trt_version} has no BuilderFlag.{name}")
        config.set_flag(flag)
    if version_compatible:
        flag = getattr(trt.BuilderFlag, "VERSION_COMPATIBLE", None)
        if flag is None:
            raise EngineBuildError(
                f"TensorRT {plan.trt_version} cannot build version-compatible engines"
            )
        config.set_flag(flag)
    shapes = builder.create_optimization_profile()
    shapes.set_shape(
        INPUT_NAME,
        trt.Dims(list(profile.min)),
        trt.Dims(list(profile.opt)),
        trt.Dims(list(profile.max)),
    )
    config.add_optimization_profile(shapes)
    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None:
        previous = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(previous)
        if not config.set_timing_cache(cache, False):
            log.warning("%s: timing cache is from another TensorRT/GPU; starting anew", cache_path)
            config.set_timing_cache(config.create_timing_cache(b""), True)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT {plan.trt_version} failed to build an engine from {onnx_path} (see the "
            "TensorRT log above; a larger --workspace can help)"
        )
    if cache_path is not None:
        write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


# Largest allowed engine-vs-ONNX Runtime difference on the raw layout, per precision:
# (box coordinates in input pixels, objectness/class probabilities). Chosen, not yet measured on
# a GPU: FP16 keeps ~3 significant digits, INT8 only bounds gross errors (its accuracy cost is
# measured as mAP by 'detector export int8 --eval').
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (0.05, 1e-3),
    "fp16": (1.0, 2e-2),
    "int8": (16.0, 0.15),
}


@dataclass(frozen=True)
class Comparison:
    """Engine vs ONNX Runtime on one batch: largest differences and whether they are within
    :data:`TOLERANCES` (raw layout), or whether the detection counts agree (NMS layout)."""

    batch: int
    box_diff: float
    prob_diff: float
    ok: bool


def compare_with_onnx(
    engine_path: str | Path,
    onnx_path: str | Path,
    batch: int = 1,
    seed: int = 0,
    allow_host_code: bool = False,
) -> Comparison:
    """Run the engine (through the serving runner) and its ONNX (ONNX Runtime, CPU) on the same
    ``[batch, 3, H, W]`` input of smooth random images and compare their outputs.

    ``allow_host_code`` is the runner's: a version-compatible engine loads only with it (the
    caller that just built one with ``version_compatible=True`` may pass that)."""
    import numpy as np

    from serve.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from serve.runtime.backends.tensorrt import TensorRTBackend

    engine = TensorRTBackend(engine_path, allow_host_code=allow_host_code)
    reference = OnnxRuntimeBackend(onnx_path, providers=["CPUExecutionProvider"])
    try:
        height, width = engine.metadata.input_size
        rng = np.random.default_rng(seed)
        coarse = rng.uniform(0, 255, size=(batch, 3, height // 8, width // 8))
        images = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3).astype(np.float32)
        got, want = engine.infer(images), reference.infer(images)
    finally:
        engine.close()
        reference.close()
    box_tol, prob_tol = TOLERANCES[engine.metadata.precision]
    if "output" in want:
        diff = np.abs(got["output"].astype(np.float64) - want["output"])
        box_diff, prob_diff = float(diff[..., :4].max()), float(diff[..., 4:].max())
        ok = box_diff <= box_tol and prob_diff <= prob_tol
    else:
        counts_equal = bool(np.array_equal(got["num_dets"].ravel(), want["num_dets"].ravel()))
        box_diff = prob_diff = float("nan")
        if counts_equal:
            mask = np.arange(want["scores"].shape[1])[None, :] < want["num_dets"].reshape(-1, 1)
            box_diff = float(np.abs(got["boxes"] - want["boxes"])[mask].max(initial=0.0))
            prob_diff = float(np.abs(got["scores"] - want["scores"])[mask].max(initial=0.0))
        ok = counts_equal and box_diff <= box_tol and prob_diff <= prob_tol
    return Comparison(batch=batch, box_diff=box_diff, prob_diff=prob_diff, ok=ok)
