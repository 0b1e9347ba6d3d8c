"""``detector export engine``: version dispatch, profiles and messages (CPU), builds (GPU).

The CPU tests run everywhere. The GPU tests need the TensorRT Python package and a CUDA GPU;
elsewhere they are skipped with the reason. In this repository's CI (no GPU) they have never
run: the TensorRT code is written against the TensorRT 10.x / 11.x Python API references and
the 10.x -> 11.x migration guide (export/TENSORRT.md), and type-checked against tensorrt-stubs.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from detector.cli import main
from export.engine import (
    EngineBuildError,
    build_engine,
    onnx_facts,
    plan_build,
    profile_shapes,
)
from serve.runtime.backends.tensorrt import (
    MISSING_TENSORRT,
    TensorRTUnavailable,
    gpu_info,
    require_tensorrt,
    unavailable_reason,
)
from serve.runtime.metadata import ModelMetadata, write_onnx_metadata

ROOT = Path(__file__).resolve().parents[2]


GPU_SKIP = unavailable_reason()
needs_gpu = pytest.mark.skipif(GPU_SKIP is not None, reason=f"TensorRT GPU test: {GPU_SKIP}")


def small_onnx(
    path: Path,
    batch: int | None = 1,
    precision: str = "fp32",
    qdq: bool = False,
    target: str | None = None,
) -> Path:
    """A one-convolution ONNX with our input name and metadata: ``images [B, 3, 32, 64]`` ->
    ``output``; ``batch=None`` makes the batch dynamic; ``qdq`` puts Q/DQ before the conv."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w")
    inits = [weight]
    nodes = []
    conv_input = "images"
    if qdq:
        inits += [
            numpy_helper.from_array(np.array(0.5, dtype=np.float32), "scale"),
            numpy_helper.from_array(np.array(0, dtype=np.int8), "zero"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["images", "scale", "zero"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"]),
        ]
        conv_input = "dq"
    nodes.append(helper.make_node("Conv", [conv_input, "w"], ["output"], pads=[1, 1, 1, 1]))
    dim = batch if batch is not None else "batch"
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [dim, 3, 32, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [dim, 8, 32, 64])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    metadata = ModelMetadata(
        model_name="small", class_names=("a",), input_size=(32, 64), precision=precision,
        batch=batch, extra={"int8": {"target": target}} if target else {},
    )  # fmt: skip
    write_onnx_metadata(model, metadata)
    onnx.save(model, str(path))
    return path


# --- version dispatch -------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["10.3.0.30", "10.13.0.35", "10.16.1"])
def test_tensorrt_10_sets_precision_flags(version):
    fp32 = plan_build(version, "fp32", "fp32")
    assert (fp32.strongly_typed, fp32.network_flags, fp32.builder_flags) == (False, (), ())
    assert plan_build(version, "fp16", "fp32").builder_flags == ("FP16",)
    assert plan_build(version, "fp16", "fp16").builder_flags == ("FP16",)
    int8 = plan_build(version, "int8", "int8")
    assert int8.builder_flags == ("INT8", "FP16") and not int8.strongly_typed
    assert int8.trt_version == version


@pytest.mark.parametrize("version", ["11.0.0", "11.4.1.10"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_11_is_strongly_typed_without_flags(version, precision):
    plan = plan_build(version, precision, precision)
    assert plan.strongly_typed
    assert plan.builder_flags == () and plan.network_flags == ()


@pytest.mark.parametrize(
    ("version", "precision", "onnx_precision", "message"),
    [
        ("11.0.0", "fp16", "fp32", "detector export onnx --half"),
        ("11.0.0", "fp32", "fp16", "without --half"),
        ("11.1.0", "int8", "fp32", "detector export int8"),
        ("10.3.0", "int8", "fp16", "detector export int8"),
        ("10.3.0", "fp16", "int8", "--precision int8"),
        ("10.13.0", "fp32", "fp16", "--precision fp16"),
        ("8.6.1", "fp32", "fp32", "too old"),
        ("abc", "fp32", "fp32", "cannot read the TensorRT version"),
        ("10.3.0", "bf16", "fp32", "--precision must be one of"),
    ],
)
def test_precision_the_onnx_cannot_give_is_an_error(version, precision, onnx_precision, message):
    with pytest.raises(EngineBuildError, match=re.escape(message)):
        plan_build(version, precision, onnx_precision)


def test_newer_major_builds_as_on_11_and_says_so(caplog):
    plan = plan_build("12.0.0", "fp16", "fp16")
    assert plan.strongly_typed and plan.builder_flags == ()
    assert "newer than the 11.x line" in caplog.text


def test_planned_flag_names_exist_in_tensorrt_10_13_stubs():
    """The flag names the 10.x plan sets (and VERSION_COMPATIBLE) are TensorRT 10.13's."""
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tensorrt-stubs not installed (pip install tensorrt-stubs --no-deps)")
    stub = Path(next(iter(spec.submodule_search_locations))) / "tensorrt.pyi"
    text = stub.read_text()
    names = {n for p in ("fp32", "fp16", "int8") for n in plan_build("10.13.0", p, p).builder_flags}
    for name in sorted(names | {"VERSION_COMPATIBLE"}):
        assert f"    {name}: typing.ClassVar[BuilderFlag]" in text, name
    assert "    WORKSPACE: typing.ClassVar[MemoryPoolType]" in text


# --- optimisation profile ---------------------------------------------------------------------


def test_fixed_batch_profile_is_its_batch():
    profile = profile_shapes((4, 3, 32, 64))
    assert profile.min == profile.opt == profile.max == (4, 3, 32, 64)
    assert profile_shapes((4, 3, 32, 64), 4, 4, 4).max == (4, 3, 32, 64)


def test_fixed_batch_onnx_rejects_another_batch():
    with pytest.raises(EngineBuildError, match=r"fixed batch of 1, .*--max-batch 8.*--dynamic"):
        profile_shapes((1, 3, 32, 64), max_batch=8, source="m.onnx")


def test_dynamic_profile_defaults_and_order():
    assert profile_shapes((None, 3, 32, 64)).max == (1, 3, 32, 64)
    profile = profile_shapes((None, 3, 32, 64), max_batch=8)
    assert (profile.min[0], profile.opt[0], profile.max[0]) == (1, 8, 8)
    profile = profile_shapes((None, 3, 32, 64), 2, 4, 16)
    assert (profile.min[0], profile.opt[0], profile.max[0]) == (2, 4, 16)
    with pytest.raises(EngineBuildError, match="min <= opt <= max"):
        profile_shapes((None, 3, 32, 64), 4, 2, 8)
    with pytest.raises(EngineBuildError, match="--min-batch must be at least 1"):
        profile_shapes((None, 3, 32, 64), 0, 1, 2)


@pytest.mark.parametrize(
    ("shape", "message"),
    [((None, 3, None, 64), "dynamic height or width"), ((1, 1, 32, 32), r"\[B, 3, H, W\]")],
)
def test_profile_needs_fixed_image_size(shape, message):
    with pytest.raises(EngineBuildError, match=message):
        profile_shapes(shape)


def test_onnx_facts_read_shape_and_qdq(tmp_path):
    assert onnx_facts(small_onnx(tmp_path / "a.onnx", batch=2)) == onnx_facts(
        small_onnx(tmp_path / "b.onnx", batch=2)
    )
    fixed = onnx_facts(tmp_path / "a.onnx")
    assert fixed.input_shape == (2, 3, 32, 64) and not fixed.has_qdq
    dynamic = onnx_facts(small_onnx(tmp_path / "d.onnx", batch=None, qdq=True))
    assert dynamic.input_shape == (None, 3, 32, 64) and dynamic.has_qdq


# --- messages without TensorRT ----------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None and GPU_SKIP is None,
                    reason="TensorRT and a GPU are installed here")  # fmt: skip
def test_cli_without_tensorrt_says_what_is_missing(tmp_path, capsys):
    onnx_path = small_onnx(tmp_path / "m.onnx")
    out = tmp_path / "m.engine"
    try:
        require_tensorrt()
    except TensorRTUnavailable:
        code = main(["export", "engine", "--onnx", str(onnx_path), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2
        assert err.startswith("error: " + MISSING_TENSORRT)
        assert "Traceback" not in err
    else:  # TensorRT present, GPU absent
        code = main(["export", "engine", "--onnx", str(onnx_path), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: no usable CUDA GPU")
    assert not out.exists() and not Path(str(out) + ".json").exists()


def test_user_mistakes_are_reported_before_looking_for_tensorrt(tmp_path, capsys):
    onnx_path = small_onnx(tmp_path / "m.onnx", batch=1)
    args = ["export", "engine", "--onnx", str(onnx_path), "--out", str(tmp_path / "m.engine")]
    assert main([*args, "--max-batch", "4"]) == 2
    assert f"{onnx_path} has a fixed batch of 1" in capsys.readouterr().err
    fake_int8 = small_onnx(tmp_path / "fake.onnx", precision="int8")
    with pytest.raises(EngineBuildError, match="no QuantizeLinear/DequantizeLinear"):
        build_engine(fake_int8, tmp_path / "f.engine", precision="int8")
    cpu_int8 = small_onnx(tmp_path / "cpu.onnx", precision="int8", qdq=True, target="cpu")
    with pytest.raises(EngineBuildError, match="quantized with --target cpu"):
        build_engine(cpu_int8, tmp_path / "c.engine", precision="int8")
    assert main(["export", "engine", "--onnx", str(tmp_path / "nope.onnx"), "--out", "x"]) == 2
    assert "nope.onnx: no such ONNX file" in capsys.readouterr().err


def test_torch2trt_without_it_says_how_to_install(tmp_path, capsys):
    if importlib.util.find_spec("torch2trt") is not None:
        pytest.skip("torch2trt is installed here")
    code = main(["export", "torch2trt", "--weights", "w.pt", "--out", str(tmp_path / "t.engine")])
    err = capsys.readouterr().err
    assert code == 2
    assert "torch2trt is not installed" in err
    assert "git clone https://github.com/NVIDIA-AI-IOT/torch2trt" in err and "pip install ." in err
    assert "detector export engine" in err and "11.x" in err


# --- type check against tensorrt-stubs --------------------------------------------------------


def _patched_stubs(folder: Path) -> Path | None:
    """tensorrt-stubs 10.13 copied to ``folder`` with its three syntax errors mended
    (parameters named ``in``; a defaultless parameter after defaulted ones), since mypy will
    not read it otherwise. ``None`` when the stubs are not installed."""
    spec = importlib.util.find_spec("tensorrt_bindings")
    trt_spec = importlib.util.find_spec("tensorrt")
    if spec is None or trt_spec is None or not spec.submodule_search_locations:
        return None
    bindings = Path(next(iter(spec.submodule_search_locations)))
    package = Path(next(iter(trt_spec.submodule_search_locations or [])))
    if not (bindings / "tensorrt.pyi").is_file() or not (package / "__init__.pyi").is_file():
        return None
    shutil.copytree(bindings, folder / "tensorrt_bindings")
    shutil.copytree(package, folder / "tensorrt")
    stub = folder / "tensorrt_bindings" / "tensorrt.pyi"
    text = re.sub(r"(def [^\n]*?)\bin: ", r"\1in_: ", stub.read_text())
    text = text.replace("channel_axis: int)", "channel_axis: int = ...)")
    stub.write_text(text)
    return folder


@pytest.mark.slow
def test_tensorrt_code_type_checks_against_tensorrt_stubs(tmp_path):
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy not installed (pip install -e .[dev])")
    stubs = _patched_stubs(tmp_path / "stubs")
    if stubs is None:
        pytest.skip("tensorrt-stubs not installed (pip install --no-deps tensorrt-stubs)")
    config = tmp_path / "mypy.ini"
    config.write_text(
        "[mypy]\nignore_missing_imports = True\nfollow_imports = silent\n"
        "[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]\n"
        "ignore_errors = True\n"
    )
    files = ["export/engine.py", "export/torch2trt.py", "serve/runtime/backends/tensorrt.py"]
    probe = tmp_path / "probe.py"  # proves the stubs are read: a wrong name must fail
    probe.write_text("import tensorrt as trt\ntrt.Builder.no_such_method\n")
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir",
         str(tmp_path / "cache"), *files, str(probe)],
        cwd=ROOT, env={"MYPYPATH": str(stubs), "PATH": ""}, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    lines = [line for line in run.stdout.splitlines() if ": error:" in line]
    assert [line for line in lines if "probe.py" not in line] == [], run.stdout
    assert any('"type[Builder]" has no attribute "no_such_method"' in x for x in lines), run.stdout


# --- the artefacts: engine first, then its sidecar with the engine's SHA-256 -------------------


def test_build_writes_the_engine_then_a_sidecar_that_pins_it(tmp_path, monkeypatch):
    """The whole of build_engine but the TensorRT calls (stood in for): the engine is written
    before its sidecar, both atomically, and the sidecar records the engine's SHA-256, which
    the runner's check accepts for this engine and refuses for any other bytes."""
    import hashlib

    from detector.core import atomic
    from export import engine as engine_module
    from serve.runtime.backends.tensorrt import GpuInfo
    from serve.runtime.metadata import (
        ENGINE_DIGEST_KEY,
        EngineDigestError,
        check_engine_digest,
        file_sha256,
        read_sidecar,
    )

    plan = b"\x00stand-in plan\xff" * 4096
    monkeypatch.setattr(engine_module, "require_tensorrt", lambda: "10.3.0.30")
    monkeypatch.setattr(engine_module, "gpu_info", lambda device: GpuInfo("Orin", "8.7"))
    monkeypatch.setattr(engine_module, "_build", lambda *args: plan)
    renames: list[str] = []
    real_replace = atomic.os.replace
    monkeypatch.setattr(
        atomic.os,
        "replace",
        lambda src, dst: (renames.append(Path(dst).name), real_replace(src, dst)),
    )
    onnx_path = small_onnx(tmp_path / "m.onnx", batch=None)
    out = build_engine(onnx_path, tmp_path / "m.engine", max_batch=2)
    assert renames == ["m.engine", "m.engine.json"]  # the engine, then what describes it
    metadata = read_sidecar(out)
    assert metadata.extra[ENGINE_DIGEST_KEY] == hashlib.sha256(plan).hexdigest() == file_sha256(out)
    check_engine_digest(out, metadata, file_sha256(out))
    (tmp_path / "other.engine").write_bytes(plan[:-1])  # a torn copy
    with pytest.raises(EngineDigestError, match=r"m\.engine is not the engine its sidecar"):
        check_engine_digest(out, metadata, file_sha256(tmp_path / "other.engine"))


# --- GPU: real builds compared with ONNX Runtime ----------------------------------------------


@pytest.fixture(scope="module")
def nano_onnx_files(nano_ckpt, tmp_path_factory):
    """FP32 and FP16 (--half) dynamic-batch ONNX of the lively nano checkpoint (128 px)."""
    from export.onnx import export_onnx

    folder = tmp_path_factory.mktemp("engine")
    fp32 = export_onnx(nano_ckpt, folder / "nano.onnx", dynamic=True)
    fp16 = export_onnx(nano_ckpt, folder / "nano.half.onnx", dynamic=True, half=True)
    return {"fp32": fp32, "fp16": fp16, "folder": folder}


def _int8_onnx(fp32: Path, folder: Path) -> Path:
    int8 = pytest.importorskip("export.int8", reason="export.int8 (INT8 Q/DQ export) missing")
    import cv2

    images = folder / "calib"
    images.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        coarse = rng.uniform(0, 255, size=(16, 16, 3)).astype(np.uint8)
        cv2.imwrite(str(images / f"{i}.jpg"), cv2.resize(coarse, (128, 128)))
    out = folder / "nano.int8.onnx"
    int8.quantize_int8(fp32, images, out, images=8, method="minmax")
    return out


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_matches_onnx_runtime(precision, nano_onnx_files, tmp_path):
    """Build from the nano ONNX (FP32; the --half ONNX for fp16; the Q/DQ ONNX for int8), run
    batch 1 and 3 through the serving runner and compare with ONNX Runtime."""
    from export.engine import TOLERANCES, compare_with_onnx
    from serve.runtime.metadata import read_sidecar

    folder = nano_onnx_files["folder"]
    if precision == "int8":
        onnx_path = _int8_onnx(nano_onnx_files["fp32"], folder)
    else:
        onnx_path = nano_onnx_files[precision]
    engine = build_engine(
        onnx_path, tmp_path / f"nano.{precision}.engine", precision=precision,
        min_batch=1, opt_batch=2, max_batch=4, timing_cache=tmp_path / "timing.cache",
    )  # fmt: skip
    data = engine.read_bytes()
    assert not data.startswith(b"{") and len(data) > 1000  # a raw plan, no JSON header
    extra = read_sidecar(engine).extra
    assert extra["tensorrt_version"] == require_tensorrt()
    assert extra["compute_capability"] == gpu_info(0).compute_capability
    assert extra["profile"]["max"] == [4, 3, 128, 128]
    assert (tmp_path / "timing.cache").stat().st_size > 0
    for batch in (1, 3):
        result = compare_with_onnx(engine, onnx_path, batch=batch)
        assert result.ok, (precision, batch, result, TOLERANCES[precision])


@needs_gpu
@pytest.mark.gpu
def test_nms_engine_detections_match_onnx_runtime(nano_ckpt, tmp_path):
    from export.engine import compare_with_onnx
    from export.onnx import export_onnx

    onnx_path = export_onnx(nano_ckpt, tmp_path / "nms.onnx", dynamic=True, nms=True)
    engine = build_engine(onnx_path, tmp_path / "nms.engine", max_batch=3)
    for batch in (1, 3):
        assert compare_with_onnx(engine, onnx_path, batch=batch).ok


@needs_gpu
@pytest.mark.gpu
def test_version_compatible_engine_runs_only_when_host_code_is_allowed(nano_onnx_files, tmp_path):
    """A version-compatible plan embeds host code: without the serve-time permission the runner
    refuses it naming the flag; with it, it loads and matches ONNX Runtime."""
    from export.engine import compare_with_onnx
    from serve.runtime.backends.tensorrt import EngineRunError, TensorRTBackend

    onnx_path = nano_onnx_files["fp32"]
    engine = build_engine(onnx_path, tmp_path / "vc.engine", version_compatible=True)
    with pytest.raises(EngineRunError, match="--allow-engine-host-code"):
        TensorRTBackend(engine)
    assert compare_with_onnx(engine, onnx_path, allow_host_code=True).ok
