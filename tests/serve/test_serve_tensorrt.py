"""The TensorRT runner: torch-free import, the engine/machine mismatch check, clear errors (CPU);
dynamic batch and the profile limits on a real engine (GPU, skipped without TensorRT and a GPU;
never run in this repository's CI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serve.runtime.backends.tensorrt import (
    EngineMismatchError,
    EngineRunError,
    GpuInfo,
    TensorRTBackend,
    TensorRTUnavailable,
    check_engine_runs_here,
    engine_mismatch,
    rebuild_command,
    unavailable_reason,
)
from serve.runtime.metadata import MetadataError, ModelMetadata, write_sidecar

ROOT = Path(__file__).resolve().parents[2]
ORIN = GpuInfo(name="Orin", compute_capability="8.7")
BUILT = {
    "tensorrt_version": "10.3.0.30",
    "gpu_name": "Orin",
    "compute_capability": "8.7",
    "version_compatible": False,
}


GPU_SKIP = unavailable_reason()


def test_importing_the_backend_needs_neither_tensorrt_nor_torch():
    code = (
        "import sys, serve.runtime.backends.tensorrt, serve.runtime.predictor\n"
        "bad = [m for m in ('tensorrt', 'torch', 'cuda.bindings.runtime') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_same_tensorrt_and_gpu_is_fine():
    assert engine_mismatch(BUILT, "10.3.0.30", ORIN) == ([], [])


def test_other_tensorrt_version_is_refused():
    problems, _ = engine_mismatch(BUILT, "10.3.0.26", ORIN)
    assert problems == [
        "it was built with TensorRT 10.3.0.30; this machine has TensorRT 10.3.0.26 (engines run "
        "only on the TensorRT version that built them)"
    ]
    assert engine_mismatch(BUILT, "11.0.0", ORIN)[0]


def test_version_compatible_engine_runs_on_later_tensorrt_only():
    built = {**BUILT, "version_compatible": True}
    assert engine_mismatch(built, "10.13.0.35", ORIN) == ([], [])
    assert engine_mismatch(built, "11.1.0", ORIN) == ([], [])
    problems, _ = engine_mismatch(built, "10.1.0", ORIN)
    assert "runs only on that version or later" in problems[0]


def test_other_gpu_architecture_is_refused_same_kind_only_warned():
    problems, _ = engine_mismatch(BUILT, "10.3.0.30", GpuInfo("NVIDIA A100", "8.0"))
    assert problems == [
        "it was built for a GPU of compute capability 8.7 (Orin); this GPU is NVIDIA A100, "
        "compute capability 8.0"
    ]
    problems, warnings = engine_mismatch(BUILT, "10.3.0.30", GpuInfo("Orin NX", "8.7"))
    assert problems == [] and "built on Orin, this GPU is Orin NX" in warnings[0]


def test_sidecar_without_build_facts_is_refused():
    problems, _ = engine_mismatch({}, "10.3.0.30", ORIN)
    assert len(problems) == 2 and "no TensorRT version" in problems[0]


def _metadata(**extra) -> ModelMetadata:
    return ModelMetadata(
        model_name="yolox_nano", class_names=("a", "b"), input_size=(416, 416),
        precision="fp16", batch=None, extra=extra,
    )  # fmt: skip


def test_mismatch_error_says_how_to_rebuild():
    profile = {"min": [1, 3, 416, 416], "opt": [2, 3, 416, 416], "max": [4, 3, 416, 416]}
    metadata = _metadata(**BUILT, onnx="models/nano.half.onnx", profile=profile)
    with pytest.raises(EngineMismatchError) as caught:
        check_engine_runs_here("nano.engine", metadata, "11.0.0", ORIN)
    message = str(caught.value)
    assert message.startswith("nano.engine: cannot run on this machine: it was built with ")
    assert message.endswith(
        "Rebuild it on this device: detector export engine --onnx models/nano.half.onnx --out "
        "nano.engine --precision fp16 --min-batch 1 --opt-batch 2 --max-batch 4"
    )
    assert rebuild_command("x.engine", _metadata()) == (
        "detector export engine --onnx M.onnx --out x.engine --precision fp16"
    )


def test_missing_engine_or_sidecar_names_the_file(tmp_path):
    with pytest.raises(EngineRunError, match="nope.engine: no such engine file"):
        TensorRTBackend(tmp_path / "nope.engine")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(MetadataError, match="no metadata sidecar m.engine.json"):
        TensorRTBackend(engine)


@pytest.mark.skipif(GPU_SKIP is None, reason="TensorRT and a GPU are installed here")
def test_without_tensorrt_or_gpu_construction_says_which(tmp_path):
    from serve.runtime.predictor import load_backend

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    write_sidecar(engine, _metadata(**BUILT))
    with pytest.raises(TensorRTUnavailable) as caught:
        load_backend(engine)  # chosen by suffix: the TensorRT backend
    message = str(caught.value)
    assert "TensorRT's Python package ('tensorrt') is not installed" in message or (
        "no usable CUDA GPU" in message or "cuda-python is not installed" in message
    )


# --- GPU --------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(GPU_SKIP is not None, reason=f"TensorRT GPU test: {GPU_SKIP}")
def test_runner_dynamic_batch_and_profile_limits(serve_onnx, tmp_path):
    """A dynamic-batch engine (profile 1..3) runs batch 1, 3 and 2 in any order and matches
    ONNX Runtime; batch 4 and a wrong image size are refused with the reason; a sidecar from
    another TensorRT makes loading fail with the rebuild command."""
    from export.engine import build_engine
    from serve.runtime.backends.onnxruntime import OnnxRuntimeBackend

    engine_path = build_engine(serve_onnx, tmp_path / "nano.engine", max_batch=3, opt_batch=2)
    backend = TensorRTBackend(engine_path)
    reference = OnnxRuntimeBackend(serve_onnx, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    try:
        assert backend.min_shape == (1, 3, 128, 128) and backend.max_shape == (3, 3, 128, 128)
        for batch in (1, 3, 2):
            images = rng.uniform(0, 255, size=(batch, 3, 128, 128)).astype(np.float32)
            got, want = backend.infer(images), reference.infer(images)
            assert got.keys() == want.keys()
            assert got["output"].shape == want["output"].shape
            np.testing.assert_allclose(got["output"][..., 4:], want["output"][..., 4:], atol=1e-3)
        with pytest.raises(EngineRunError, match=r"batch 4 is outside .* \(1\.\.3\)"):
            backend.infer(np.zeros((4, 3, 128, 128), np.float32))
        with pytest.raises(EngineRunError, match=r"input must be \[B, 3, 128, 128\]"):
            backend.infer(np.zeros((1, 3, 64, 64), np.float32))
    finally:
        backend.close()
    sidecar = Path(str(engine_path) + ".json")
    data = json.loads(sidecar.read_text())
    data["extra"]["tensorrt_version"] = "9.9.9"
    sidecar.write_text(json.dumps(data))
    with pytest.raises(EngineMismatchError, match="Rebuild it on this device: detector export"):
        TensorRTBackend(engine_path)
