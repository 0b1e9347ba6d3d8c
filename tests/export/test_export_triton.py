"""``detector export triton``: every config.pbtxt parses with Triton's own schema, matches the
ONNX graph and the v2 contract, and the ensemble's steps, run in-process (the Python models'
real ``model.py`` with a stand-in ``triton_python_backend_utils``, the network with a real ONNX
Runtime session), give the detections of our runtime.

No Docker and no GPU here: only the opt-in test at the end starts a real tritonserver (a CPU
build from the nvidia-pytriton wheel), as export/TRITON.md describes.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import lively_checkpoint
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from detector.cli import main
from detector.core.defaults import MAX_DET, PREDICT_CONF, PREDICT_IOU
from export.triton import MAX_DET_LIMIT, MAX_PIXELS, MODEL_PY
from serve.routes.v2.io import IMAGE_INPUT, OUTPUT_SPECS
from serve.runtime.images import decode_image
from serve.runtime.metadata import (
    ModelMetadata,
    read_onnx_metadata,
    write_onnx_metadata,
    write_sidecar,
)
from serve.runtime.predictor import Predictor
from serve.settings import ServeSettings

ROOT = Path(__file__).resolve().parents[2]
BCCD_IMAGE = ROOT / "data" / "bccd" / "images" / "BloodImage_00000.jpg"
IMGSZ = 64
ONNX_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
}
V2_TYPES = {"FP32": "TYPE_FP32", "INT32": "TYPE_INT32"}
_modules = itertools.count()


# ---- fixtures: real ONNX files (nano, 64 px) -------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``raw`` (dynamic batch), ``nms`` (dynamic, NMS in the graph) and ``fixed`` (the raw graph
    with its batch pinned to 1, metadata to match)."""
    from export.onnx import export_onnx

    folder = tmp_path_factory.mktemp("triton_models")
    ckpt = lively_checkpoint(folder / "nano.pt", "yolox_nano", seed=1)
    raw = export_onnx(ckpt, folder / "raw.onnx", imgsz=IMGSZ, dynamic=True)
    nms = export_onnx(ckpt, folder / "nms.onnx", imgsz=IMGSZ, dynamic=True, nms=True)
    graph = onnx.load(str(raw))
    for value in (*graph.graph.input, *graph.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    write_onnx_metadata(graph, read_onnx_metadata(raw).with_updates(batch=1))
    fixed = folder / "fixed.onnx"
    onnx.save(graph, str(fixed))
    return {"raw": Path(raw), "nms": Path(nms), "fixed": fixed}


@pytest.fixture(scope="module")
def image_bytes() -> list[bytes]:
    """A real photo (BCCD, 640x480 JPEG) and a drawn 200x120 PNG: two aspect ratios, so the
    letterbox and the mapping back to original pixels differ between them."""
    drawn = np.full((120, 200, 3), 40, np.uint8)
    cv2.rectangle(drawn, (20, 10), (90, 100), (30, 200, 240), -1)
    cv2.circle(drawn, (150, 60), 35, (220, 60, 60), -1)
    return [BCCD_IMAGE.read_bytes(), cv2.imencode(".png", drawn)[1].tobytes()]


def export_triton(model: Path, out: Path, *flags: str) -> int:
    return main(["export", "triton", "--model", str(model), "--out", str(out), *flags])


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    """Strict parse with Triton's schema: an unknown field or a bad value raises."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def read_repository(root: Path) -> dict[str, model_config_pb2.ModelConfig]:
    configs = {p.parent.name: read_config(p) for p in sorted(root.glob("*/config.pbtxt"))}
    for name, config in configs.items():
        assert config.name == name  # Triton requires the folder and the name to agree
    return configs


def dims_of(value: onnx.ValueInfoProto) -> tuple[int, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else -1
                 for d in value.type.tensor_type.shape.dim)  # fmt: skip


def io_of(config: model_config_pb2.ModelConfig, key: str) -> dict[str, tuple[str, tuple]]:
    entries = getattr(config, key)
    return {t.name: (model_config_pb2.DataType.Name(t.data_type), tuple(t.dims)) for t in entries}


# ---- a stand-in for triton_python_backend_utils (real NumPy tensors) --------------------------


class TritonError:
    INVALID_ARG = "INVALID_ARG"
    INTERNAL = "INTERNAL"

    def __init__(self, message: str, code: str = INTERNAL) -> None:
        self._message, self.code = message, code

    def message(self) -> str:
        return self._message


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        assert isinstance(array, np.ndarray), type(array)
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class InferenceRequest:
    def __init__(self, tensors: dict[str, np.ndarray], parameters: dict | None = None) -> None:
        self._inputs = [Tensor(k, v) for k, v in tensors.items()]
        self._parameters = json.dumps(parameters or {})

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def parameters(self) -> str:
        return self._parameters


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None, error=None) -> None:
        self._outputs, self._error = output_tensors or [], error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


@pytest.fixture
def pb_utils(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = Tensor
    module.InferenceRequest = InferenceRequest
    module.InferenceResponse = InferenceResponse
    module.TritonError = TritonError
    module.get_input_tensor_by_name = get_input_tensor_by_name
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    return module


def load_python_model(folder: Path, config: model_config_pb2.ModelConfig):
    """Import ``folder/1/model.py`` the way Triton's stub does and call ``initialize`` with the
    model config as JSON (the parameters map as Triton's JSON form of the protobuf)."""
    spec = importlib.util.spec_from_file_location(f"triton_model_{next(_modules)}",
                                                  folder / "1" / "model.py")  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    parameters = {k: {"string_value": v.string_value} for k, v in config.parameters.items()}
    model_config = {"name": config.name, "backend": config.backend, "parameters": parameters}
    model.initialize({"model_config": json.dumps(model_config), "model_name": config.name,
                      "model_version": "1", "model_instance_kind": "CPU"})  # fmt: skip
    return model


class Ensemble:
    """Runs a written repository's ensemble as Triton's ensemble scheduler would: steps in the
    order of the config, tensors routed by ``input_map``/``output_map``; Python models through
    their ``model.py``, the network through ONNX Runtime."""

    def __init__(self, root: Path, name: str) -> None:
        self.root, self.configs = root, read_repository(root)
        self.ensemble = self.configs[name]
        self.steps = []
        for step in self.ensemble.ensemble_scheduling.step:
            config = self.configs[step.model_name]
            if config.backend == "python":
                runner = load_python_model(root / step.model_name, config)
            else:
                path = root / step.model_name / "1" / "model.onnx"
                runner = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self.steps.append((step, runner))

    def infer(self, images: list[bytes], parameters: dict | None = None) -> dict[str, np.ndarray]:
        data = np.empty((len(images), 1), dtype=object)
        data[:, 0] = images
        tensors = {IMAGE_INPUT: data}
        for step, runner in self.steps:
            feeds = {key: tensors[value] for key, value in step.input_map.items()}
            if isinstance(runner, ort.InferenceSession):
                names = [o.name for o in runner.get_outputs()]
                outputs = dict(zip(names, runner.run(names, feeds)))
            else:
                (response,) = runner.execute([InferenceRequest(feeds, parameters)])
                if response.has_error():
                    raise ValueError(response.error().message())
                outputs = {t.name(): t.as_numpy() for t in response.output_tensors()}
            for key, value in step.output_map.items():
                tensors[value] = outputs[key]
        return {t.name: tensors[t.name] for t in self.ensemble.output}


# ---- configs -------------------------------------------------------------------------------


def test_configs_parse_with_triton_schema_and_match_the_graph(models, tmp_path, capsys):
    repo = tmp_path / "repo"
    flags = ["--name", "cells", "--max-batch", "4", "--preferred-batch", "2", "4",
             "--queue-delay-us", "50", "--instances", "2"]  # fmt: skip
    assert export_triton(models["raw"], repo, *flags) == 0, capsys.readouterr().err
    assert "cells" in capsys.readouterr().out
    configs = read_repository(repo)
    assert set(configs) == {"cells", "cells_preprocess", "cells_model", "cells_postprocess"}
    for config in configs.values():
        assert config.max_batch_size == 4

    network = configs["cells_model"]
    assert network.platform == "onnxruntime_onnx"
    assert (repo / "cells_model" / "1" / "model.onnx").read_bytes() == models["raw"].read_bytes()
    assert list(network.dynamic_batching.preferred_batch_size) == [2, 4]
    assert network.dynamic_batching.max_queue_delay_microseconds == 50
    (group,) = network.instance_group
    assert (group.count, model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind)) == (
        2,
        "KIND_GPU",
    )
    graph = onnx.load(str(models["raw"])).graph
    for key, values in (("input", graph.input), ("output", graph.output)):
        expected = {}
        for v in values:
            dims = dims_of(v)
            assert dims[0] == -1  # dynamic batch: Triton adds the batch dim itself
            expected[v.name] = (ONNX_TYPES[v.type.tensor_type.elem_type], dims[1:])
        assert io_of(network, key) == expected

    ensemble = configs["cells"]
    assert ensemble.platform == "ensemble" and not ensemble.instance_group
    assert io_of(ensemble, "input") == {IMAGE_INPUT: ("TYPE_STRING", (1,))}
    assert io_of(ensemble, "output") == {
        name: (V2_TYPES[v2], tuple(-1 if d == "K" else d for d in shape))
        for name, (v2, _, shape) in OUTPUT_SPECS.items()
    }
    assert [o.name for o in ensemble.output] == list(OUTPUT_SPECS)
    check_ensemble_wiring(configs, "cells")

    for half in ("cells_preprocess", "cells_postprocess"):
        config = configs[half]
        assert config.backend == "python" and not config.platform
        assert (repo / half / "1" / "model.py").read_text() == MODEL_PY.read_text()
        assert [model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)
                for g in config.instance_group] == ["KIND_CPU"]  # fmt: skip
        metadata = ModelMetadata.from_json(config.parameters["metadata"].string_value)
        assert metadata == read_onnx_metadata(models["raw"])
    post = configs["cells_postprocess"].parameters
    assert float(post["conf"].string_value) == PREDICT_CONF
    assert float(post["iou"].string_value) == PREDICT_IOU
    assert int(post["max_det"].string_value) == MAX_DET
    # the Python models' limits are the server's defaults
    assert int(configs["cells_preprocess"].parameters["max_pixels"].string_value) == MAX_PIXELS
    assert MAX_PIXELS == ServeSettings.model_fields["max_pixels"].default
    assert MAX_DET_LIMIT == ServeSettings.model_fields["max_det_limit"].default


def check_ensemble_wiring(configs: dict[str, model_config_pb2.ModelConfig], name: str) -> None:
    """Triton's ensemble checks: every step's model exists and every map key is one of its
    tensors; each ensemble tensor is produced once (an ensemble input or one step output) with
    the same type and dims as where it is consumed; every ensemble output is produced."""
    ensemble = configs[name]
    produced = {t.name: io_of(ensemble, "input")[t.name] for t in ensemble.input}
    consumed = []
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        assert step.model_version == -1
        inputs, outputs = io_of(model, "input"), io_of(model, "output")
        assert set(step.input_map) == set(inputs)
        assert set(step.output_map) <= set(outputs)
        for key, value in step.input_map.items():
            consumed.append((value, inputs[key]))
        for key, value in step.output_map.items():
            assert value not in produced, f"{value} produced twice"
            produced[value] = outputs[key]
    for value, spec in consumed:
        assert produced[value] == spec, value
    for tensor_name, spec in io_of(ensemble, "output").items():
        assert produced[tensor_name] == spec


def test_default_name_is_the_servers_and_nms_layout_io(models, tmp_path):
    repo = tmp_path / "repo"
    assert export_triton(models["nms"], repo) == 0
    configs = read_repository(repo)
    name = ServeSettings.model_fields["name"].default  # what our server's /v2 answers to
    assert name == "detector"
    assert set(configs) == {name, f"{name}_preprocess", f"{name}_model", f"{name}_postprocess"}
    assert configs[name].max_batch_size == 8  # the default for a dynamic ONNX
    graph = onnx.load(str(models["nms"])).graph
    expected = {v.name: (ONNX_TYPES[v.type.tensor_type.elem_type], dims_of(v)[1:])
                for v in graph.output}  # fmt: skip
    assert io_of(configs[f"{name}_model"], "output") == expected
    assert set(expected) == {"num_dets", "boxes", "scores", "classes"}
    check_ensemble_wiring(configs, name)


# ---- the ensemble's steps against our runtime -------------------------------------------------


@pytest.mark.parametrize("layout", ["raw", "nms"])
def test_ensemble_steps_give_the_runtimes_detections(layout, models, image_bytes, tmp_path,
                                                     pb_utils):  # fmt: skip
    repo = tmp_path / "repo"
    assert export_triton(models[layout], repo, "--name", "det") == 0
    ensemble = Ensemble(repo, "det")
    predictor = Predictor.from_path(models[layout])
    decoded = [decode_image(b, MAX_PIXELS) for b in image_bytes]
    cases = [
        ({}, PREDICT_CONF, PREDICT_IOU, MAX_DET, None),
        # per-request parameters, as our server's /v2 takes them
        ({"conf": 0.4, "iou": "0.3", "max_det": 3}, 0.4, 0.3, 3, None),
        ({"conf": 0.1, "classes": "blue,0"}, 0.1, PREDICT_IOU, MAX_DET, [0, 2]),
    ]
    total = 0
    for parameters, conf, iou, max_det, classes in cases:
        outputs = ensemble.infer(image_bytes, parameters)
        expected = predictor.predict(decoded, conf=conf, iou=iou, max_det=max_det, classes=classes)
        if classes is not None:
            assert set(outputs["classes"][outputs["scores"] > 0].tolist()) <= set(classes)
        assert outputs["num_dets"].shape == (2, 1) and outputs["num_dets"].dtype == np.int32
        assert outputs["boxes"].shape == (2, max_det, 4) and outputs["boxes"].dtype == np.float32
        assert outputs["scores"].shape == (2, max_det) and outputs["classes"].dtype == np.int32
        for i, det in enumerate(expected):
            k = int(outputs["num_dets"][i, 0])
            assert k == len(det.scores)
            np.testing.assert_allclose(outputs["boxes"][i, :k], det.boxes, rtol=1e-3, atol=1e-3)
            np.testing.assert_allclose(outputs["scores"][i, :k], det.scores, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(outputs["classes"][i, :k], det.classes)
            assert not outputs["scores"][i, k:].any() and not outputs["boxes"][i, k:].any()
            total += k
    # the photo's boxes are in its own 640x480 pixels, not the 64 px input's
    assert total > 0
    assert outputs["boxes"][0, : int(outputs["num_dets"][0, 0])].max() > IMGSZ
    predictor.close()


def test_bad_requests_fail_alone_with_invalid_arg(models, image_bytes, tmp_path, pb_utils):
    repo = tmp_path / "repo"
    assert export_triton(models["raw"], repo, "--name", "det") == 0
    configs = read_repository(repo)
    pre = load_python_model(repo / "det_preprocess", configs["det_preprocess"])
    good = np.array([[image_bytes[1]]], dtype=object)
    bad = np.array([[b"not an image at all"]], dtype=object)
    responses = pre.execute([InferenceRequest({IMAGE_INPUT: bad}),
                             InferenceRequest({IMAGE_INPUT: good})])  # fmt: skip
    assert responses[0].has_error() and responses[0].error().code == TritonError.INVALID_ARG
    assert "IMAGE[0]" in responses[0].error().message()
    assert not responses[1].has_error()
    images = {t.name(): t.as_numpy() for t in responses[1].output_tensors()}
    assert images["images"].shape == (1, 3, IMGSZ, IMGSZ) and images["images"].dtype == np.float32
    np.testing.assert_allclose(images["letterbox"], [[IMGSZ / 200, 120, 200]])

    ensemble = Ensemble(repo, "det")
    for parameters, fragment in (({"max_det": 0}, "max_det"), ({"conf": "high"}, "conf"),
                                 ({"max_det": MAX_DET_LIMIT + 1}, "max_det"),
                                 ({"iou": 1.5}, "iou"), ({"max_det": 2.5}, "whole"),
                                 ({"classes": "purple"}, "unknown class")):  # fmt: skip
        with pytest.raises(ValueError, match=fragment):
            ensemble.infer(image_bytes[:1], parameters)


def test_model_py_imports_no_torch_nor_the_server_stack():
    """In the Triton container model.py needs only the base install (NumPy, OpenCV, Pillow): no
    PyTorch, no ONNX Runtime, no FastAPI/pydantic (checked in a fresh interpreter)."""
    script = (
        "import importlib.util, sys, types\n"
        "sys.modules['triton_python_backend_utils'] = types.ModuleType('pb')\n"
        f"spec = importlib.util.spec_from_file_location('model', {str(MODEL_PY)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, check=True)  # fmt: skip
    loaded = set(done.stdout.split())
    assert {"numpy", "cv2", "PIL", "detector", "serve"} <= loaded
    heavy = {"torch", "torchvision", "onnxruntime", "onnx", "fastapi", "pydantic", "export"}
    assert not loaded & heavy


# ---- fixed batch, engines, bad input ----------------------------------------------------------


def test_fixed_batch_model_gets_max_batch_size_0(models, image_bytes, tmp_path, capsys, pb_utils):
    repo = tmp_path / "repo"
    assert export_triton(models["fixed"], repo, "--name", "one") == 0
    assert "fixed batch 1" in capsys.readouterr().out
    configs = read_repository(repo)
    for config in configs.values():
        assert config.max_batch_size == 0
        assert not config.HasField("dynamic_batching")
    assert io_of(configs["one_model"], "input") == {"images": ("TYPE_FP32", (1, 3, IMGSZ, IMGSZ))}
    assert io_of(configs["one"], "input") == {IMAGE_INPUT: ("TYPE_STRING", (1, 1))}
    assert io_of(configs["one"], "output")["boxes"] == ("TYPE_FP32", (1, -1, 4))
    check_ensemble_wiring(configs, "one")
    # a client still sends IMAGE [1, 1] and gets [1, K, 4]: the same shapes as from a batched one
    outputs = Ensemble(repo, "one").infer(image_bytes[:1])
    assert outputs["boxes"].shape == (1, MAX_DET, 4)

    code = export_triton(models["fixed"], tmp_path / "other", "--max-batch", "4")
    err = capsys.readouterr().err
    assert code == 2 and "fixed batch of 1" in err and "--dynamic" in err
    assert not (tmp_path / "other").exists()


def fake_engine(folder: Path, onnx_path: Path, low: int = 1, high: int = 16) -> Path:
    """A stand-in plan (TensorRT cannot run here) with the sidecar 'export engine' writes."""
    engine = folder / "m.engine"
    engine.write_bytes(b"not a real plan: Triton's tensorrt backend would load this file")
    profile = {"min": [low, 3, IMGSZ, IMGSZ], "opt": [high, 3, IMGSZ, IMGSZ],
               "max": [high, 3, IMGSZ, IMGSZ]}  # fmt: skip
    metadata = read_onnx_metadata(onnx_path).with_updates(
        precision="fp16", batch=None, extra={"profile": profile, "tensorrt_version": "10.3.0"}
    )
    write_sidecar(engine, metadata)
    return engine


def test_engine_gives_a_tensorrt_plan(models, tmp_path, capsys):
    engine = fake_engine(tmp_path, models["raw"])
    repo = tmp_path / "repo"
    assert export_triton(engine, repo, "--name", "trt") == 0
    configs = read_repository(repo)
    assert configs["trt_model"].platform == "tensorrt_plan"
    assert (repo / "trt_model" / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert not (repo / "trt_model" / "1" / "model.onnx").exists()
    assert configs["trt"].max_batch_size == 16  # the profile's max
    # the engine's I/O (from its sidecar) is the ONNX graph's it was built from
    onnx_repo = tmp_path / "onnx_repo"
    assert export_triton(models["raw"], onnx_repo, "--name", "trt") == 0
    onnx_model = read_repository(onnx_repo)["trt_model"]
    for key in ("input", "output"):
        assert io_of(configs["trt_model"], key) == io_of(onnx_model, key)
    check_ensemble_wiring(configs, "trt")

    capsys.readouterr()
    assert export_triton(engine, tmp_path / "r2", "--max-batch", "32") == 2
    assert "profile allows (16)" in capsys.readouterr().err
    assert export_triton(engine, tmp_path / "r3", "--kind", "cpu") == 2
    assert "GPU only" in capsys.readouterr().err
    (tmp_path / "late").mkdir()
    late = fake_engine(tmp_path / "late", models["raw"], low=2)
    assert export_triton(late, tmp_path / "r4") == 2
    assert "--min-batch 1" in capsys.readouterr().err


def test_bad_inputs_exit_2_naming_the_problem(models, tmp_path, capsys):
    missing = tmp_path / "nowhere.onnx"
    assert export_triton(missing, tmp_path / "r") == 2
    assert str(missing) in capsys.readouterr().err
    checkpoint = tmp_path / "m.pt"
    checkpoint.write_bytes(b"x")
    assert export_triton(checkpoint, tmp_path / "r") == 2
    assert "unknown model file type '.pt'" in capsys.readouterr().err
    engine = tmp_path / "bare.engine"
    engine.write_bytes(b"plan")
    assert export_triton(engine, tmp_path / "r") == 2
    assert "bare.engine.json" in capsys.readouterr().err
    assert export_triton(models["raw"], tmp_path / "r", "--preferred-batch", "16") == 2
    assert "--preferred-batch 16" in capsys.readouterr().err
    assert export_triton(models["raw"], tmp_path / "r", "--name", "../up") == 2
    assert "--name" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
    # an ONNX may run on CPU instances instead
    assert export_triton(models["raw"], tmp_path / "cpu", "--kind", "cpu", "--instances", "3") == 0
    (group,) = read_repository(tmp_path / "cpu")["detector_model"].instance_group
    assert (group.count, model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind)) == (
        3,
        "KIND_CPU",
    )


# ---- opt-in: a real Triton server -------------------------------------------------------------

TRITON_HOME = os.environ.get("DETECTOR_TRITONSERVER")  # a folder with bin/tritonserver, backends/
STUB_PATH = os.environ.get("DETECTOR_TRITON_STUB_CWD")  # where the Python stub finds our packages
ORT_STAND_IN = '''"""Test stand-in for the onnxruntime backend (absent from this Triton build):
the network run with ONNX Runtime in a Python-backend model, same config I/O, same model.onnx."""
import os

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, self.input).as_numpy()
            values = self.session.run(self.outputs, {self.input: images})
            tensors = [pb_utils.Tensor(n, v) for n, v in zip(self.outputs, values)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(
    not (TRITON_HOME and STUB_PATH),
    reason="needs a Triton server build: set DETECTOR_TRITONSERVER (bin/tritonserver, backends/) "
    "and DETECTOR_TRITON_STUB_CWD (export/TRITON.md, 'What was checked here')",
)
@pytest.mark.parametrize("layout", ["raw", "nms", "fixed"])
def test_real_triton_server_serves_the_repository(layout, models, image_bytes, tmp_path):
    """tritonserver loads the repository and tests/serve/v2_client.py (the client our server's
    /v2 tests use) gets the runtime's detections from it, request parameters and errors too."""
    sys.path.insert(0, str(ROOT / "tests" / "serve"))
    from tritonclient.utils import InferenceServerException
    from v2_client import detect_v2

    home, repo = Path(TRITON_HOME), tmp_path / "repo"
    assert export_triton(models[layout], repo) == 0
    network = repo / "detector_model"
    if not (home / "backends" / "onnxruntime").is_dir():
        (network / "1" / "model.py").write_text(ORT_STAND_IN)
        config = (network / "config.pbtxt").read_text()
        config = config.replace('platform: "onnxruntime_onnx"', 'backend: "python"')
        (network / "config.pbtxt").write_text(config.replace("KIND_GPU", "KIND_CPU"))
    port = free_port()
    command = [str(home / "bin" / "tritonserver"), f"--model-repository={repo}",
               f"--backend-directory={home / 'backends'}", f"--http-port={port}",
               f"--grpc-port={free_port()}", "--allow-metrics=false",
               "--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0"]  # fmt: skip
    log = (tmp_path / "triton.log").open("w")
    server = subprocess.Popen(command, cwd=STUB_PATH, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"127.0.0.1:{port}"
        wait_ready(url, server, tmp_path / "triton.log")
        count = 1 if layout == "fixed" else 2  # a fixed batch of 1: one image per request
        sent = image_bytes[:count]
        predictor = Predictor.from_path(models[layout])
        decoded = [decode_image(b, MAX_PIXELS) for b in sent]
        for parameters, options in (
            (None, {}),
            ({"conf": 0.4, "iou": 0.3, "max_det": 3}, {"conf": 0.4, "iou": 0.3, "max_det": 3}),
        ):
            answers = detect_v2(url, "detector", sent, parameters=parameters)
            expected = predictor.predict(decoded, **{"max_det": MAX_DET, **options})
            for got, det in zip(answers, expected):
                np.testing.assert_allclose(got["boxes"], det.boxes, rtol=1e-3, atol=1e-3)
                np.testing.assert_allclose(got["scores"], det.scores, rtol=1e-5, atol=1e-6)
                np.testing.assert_array_equal(got["classes"], det.classes)
        predictor.close()
        with pytest.raises(InferenceServerException, match="IMAGE\\[0\\]") as error:
            detect_v2(url, "detector", [b"not an image"])
        assert error.value.status() == "400"
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def wait_ready(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"tritonserver exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if client.is_server_ready():
                return
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        time.sleep(1)
    pytest.fail(f"tritonserver not ready after {timeout_s} s:\n{log.read_text()[-3000:]}")
