"""The TensorRT runner: torch-free import, the engine/machine mismatch check, the engine-sidecar
digest and the host-code permission (both checked before TensorRT is needed), clear errors (CPU);
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
    HOST_CODE_FLAG,
    EngineMismatchError,
    EngineRunError,
    GpuInfo,
    TensorRTBackend,
    TensorRTUnavailable,
    check_engine_runs_here,
    check_host_code_allowed,
    engine_mismatch,
    rebuild_command,
    unavailable_reason,
)
from serve.runtime.metadata import (
    ENGINE_DIGEST_KEY,
    EngineDigestError,
    MetadataError,
    ModelMetadata,
    file_sha256,
    sidecar_path,
    write_sidecar,
)

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


def _engine_pair(folder: Path, plan: bytes = b"plan " * 1000, **extra) -> Path:
    engine = folder / "m.engine"
    engine.write_bytes(plan)
    write_sidecar(engine, _metadata(**{**BUILT, **extra}))
    return engine


def _past_our_checks(engine: Path, **options) -> None:
    """Construct the runner and expect it to stop only where TensorRT itself is needed (so our
    own checks passed); on a machine with TensorRT and a GPU, the stand-in plan fails later."""
    with pytest.raises((TensorRTUnavailable, EngineRunError)) as caught:
        TensorRTBackend(engine, **options)
    if isinstance(caught.value, EngineRunError):
        assert "could not deserialize" in str(caught.value)


def test_sidecar_records_the_engine_digest(tmp_path):
    engine = _engine_pair(tmp_path)
    data = json.loads(sidecar_path(engine).read_text())
    assert data["extra"][ENGINE_DIGEST_KEY] == file_sha256(engine)
    assert len(file_sha256(engine)) == 64
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries
    with pytest.raises(MetadataError, match="write it before its sidecar"):
        write_sidecar(tmp_path / "unbuilt.engine", _metadata(**BUILT))


@pytest.mark.parametrize("swap", ["other engine", "torn copy", "appended"])
def test_an_engine_that_is_not_its_sidecars_is_refused_naming_both(tmp_path, swap):
    engine = _engine_pair(tmp_path)
    plan = engine.read_bytes()
    engine.write_bytes(
        {"other engine": b"another plan " * 400, "torn copy": plan[: len(plan) // 2],
         "appended": plan + b"\x00"}[swap]
    )  # fmt: skip
    with pytest.raises(EngineDigestError) as caught:
        TensorRTBackend(engine, allow_host_code=True)
    message = str(caught.value)
    assert f"{engine} is not the engine its sidecar {sidecar_path(engine)} describes" in message
    assert file_sha256(engine) in message


def test_a_sidecar_without_a_digest_is_refused(tmp_path):
    engine = _engine_pair(tmp_path)
    data = json.loads(sidecar_path(engine).read_text())
    del data["extra"][ENGINE_DIGEST_KEY]
    sidecar_path(engine).write_text(json.dumps(data))
    with pytest.raises(EngineDigestError, match="records no engine SHA-256"):
        TensorRTBackend(engine)


def test_version_compatible_engine_needs_the_serve_time_flag(tmp_path):
    engine = _engine_pair(tmp_path, version_compatible=True)
    with pytest.raises(EngineRunError) as caught:
        TensorRTBackend(engine)  # the sidecar says version-compatible: not enough on its own
    assert HOST_CODE_FLAG == "--allow-engine-host-code"
    assert HOST_CODE_FLAG in str(caught.value) and str(engine) in str(caught.value)
    _past_our_checks(engine, allow_host_code=True)
    plain = tmp_path / "plain"
    plain.mkdir()
    _past_our_checks(_engine_pair(plain, version_compatible=False))  # no host code: no flag
    check_host_code_allowed("x.engine", _metadata(**BUILT), allow_host_code=False)


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
    engine_path.write_bytes(engine_path.read_bytes()[:-16])  # torn: never handed to TensorRT
    with pytest.raises(EngineDigestError, match="is not the engine its sidecar"):
        TensorRTBackend(engine_path)


def test_the_server_passes_the_operators_choice_to_the_runner(tmp_path):
    """``serve --allow-engine-host-code`` (or its variable) reaches the runner; without it a
    version-compatible engine stops the server at load time with the flag's name."""
    from detector.cli import build_parser
    from detector.cli.serve import settings_from_args
    from serve.state import load_predictor

    engine = _engine_pair(tmp_path, version_compatible=True)
    parser = build_parser("serve")
    refused = settings_from_args(parser.parse_args(["serve", "--model", str(engine)]))
    with pytest.raises(EngineRunError, match=HOST_CODE_FLAG):
        load_predictor(refused)
    allowed = settings_from_args(
        parser.parse_args(["serve", "--model", str(engine), HOST_CODE_FLAG])
    )
    assert allowed.allow_engine_host_code is True
    with pytest.raises((TensorRTUnavailable, EngineRunError)) as caught:
        load_predictor(allowed)
    assert HOST_CODE_FLAG not in str(caught.value)  # past the permission check
