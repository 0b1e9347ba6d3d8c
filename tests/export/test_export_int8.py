"""``detector export int8`` on a nano trained in the test: the report states the float and INT8
mAP and the drop, ``--max-drop`` below the drop fails and keeps no file, the graph is what
TensorRT accepts (signed INT8, zero point 0, per-channel weights) and the decode stays float."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from detector.cli import export_int8 as cli_int8
from detector.cli import main
from detector.core.defaults import PREDICT_CONF
from detector.core.preprocess import preprocess
from detector.training.launch import train
from export import int8
from export.calib import CalibrationError, ImageCalibrationReader, calibration_images
from export.onnx import export_onnx
from serve.runtime.metadata import read_onnx_metadata
from serve.runtime.predictor import Detections, Predictor

# the memorising recipe of tests/training/test_engine_train.py, shortened
RECIPE = ["batch=4", "imgsz=128", "workers=0", "plots=false", "device=cpu", "epochs=30",
          "eval_interval=30", "optimizer=adamw", "lr_per_64=0.08", "augment.mosaic_prob=0",
          "augment.hsv_prob=0", "augment.flip_prob=0", "ema=false", "warmup_epochs=1",
          "no_aug_epochs=0"]  # fmt: skip
CALIB_IMAGES = "16"
# the float and INT8 models serve alike (test_int8_model_serves_like_the_float_one): of the
# detections either serves, MIN_MATCHED have a same-class counterpart at IoU >= MATCH_IOU in the
# other; median IoU and score gap of those counterparts
MATCH_IOU = 0.5
MIN_MATCHED = 0.85
MIN_MEDIAN_IOU = 0.8
MAX_MEDIAN_SCORE_GAP = 0.08


@pytest.fixture(scope="module")
def float_onnx(memorise_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A nano trained on the generated images (it detects them), exported to ONNX."""
    out = tmp_path_factory.mktemp("int8")
    run = train("yolox_nano", memorise_data, [*RECIPE, f"output_dir={out}", "name=nano"])
    return export_onnx(run / "weights" / "best.pt", out / "nano.onnx")


@pytest.fixture(scope="module")
def int8_run(float_onnx: Path, memorise_data: Path) -> tuple[Path, dict]:
    """The command as a user runs it, with --eval; returns the INT8 file and its JSON report."""
    out = float_onnx.with_name("nano.int8.onnx")
    report = float_onnx.with_name("report.json")
    code = main(["export", "int8", "--onnx", str(float_onnx), "--calib", str(memorise_data),
                 "--out", str(out), "--images", CALIB_IMAGES, "--eval", str(memorise_data),
                 "--json", str(report)])  # fmt: skip
    assert code == 0
    return out, json.loads(report.read_text())


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box ``[4]`` with ``[K, 4]`` boxes -> ``[K]``."""
    wh = (np.minimum(box[2:], boxes[:, 2:]) - np.maximum(box[:2], boxes[:, :2])).clip(0)
    inter = wh[:, 0] * wh[:, 1]
    area = (box[2] - box[0]) * (box[3] - box[1])
    return inter / (area + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter)


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _counterparts(
    served: list[Detections], other: list[Detections]
) -> tuple[np.ndarray, np.ndarray]:
    """For each detection of ``served`` scoring >= ``PREDICT_CONF``: the best IoU with a
    same-class detection of ``other`` on the same image (0 without one) and its score gap."""
    ious, gaps = [], []
    for a, b in zip(served, other, strict=True):
        for box, cls, score in zip(a.boxes, a.classes, a.scores):
            if score < PREDICT_CONF:
                continue
            same = b.classes == cls
            if not same.any():
                ious.append(0.0)
                gaps.append(1.0)
                continue
            overlap = _iou(box, b.boxes[same])
            best = int(overlap.argmax())
            ious.append(overlap[best])
            gaps.append(abs(b.scores[same][best] - score))
    return np.array(ious), np.array(gaps)


def _disagreement(fp: list[Detections], q: list[Detections]) -> list[str]:
    """How the INT8 detections ``q`` fail to serve like the float ones ``fp`` (empty: they
    agree); see ``test_int8_model_serves_like_the_float_one``."""
    problems = []
    for name, (a, b) in {"float -> INT8": (fp, q), "INT8 -> float": (q, fp)}.items():
        ious, gaps = _counterparts(a, b)
        if not len(ious):
            problems.append(f"{name}: no detection >= {PREDICT_CONF}")
            continue
        matched = float(np.mean(ious >= MATCH_IOU))
        if matched < MIN_MATCHED:
            problems.append(f"{name}: {matched:.2f} of {len(ious)} with a counterpart")
        if np.median(ious) < MIN_MEDIAN_IOU:
            problems.append(f"{name}: median IoU {np.median(ious):.3f}")
        if np.median(gaps) > MAX_MEDIAN_SCORE_GAP:
            problems.append(f"{name}: median score gap {np.median(gaps):.3f}")
    return problems


def _scale_activations(model: onnx.ModelProto, factor: float) -> None:
    """Multiply the scale of every activation QuantizeLinear (shared by its DequantizeLinear)
    by ``factor``, in place; the weights' scales are left alone."""
    weights = {t.name for t in model.graph.initializer}
    weight_scales = {
        n.input[1]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in weights
    }
    scales = {n.input[1] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    for tensor in model.graph.initializer:
        if tensor.name in scales - weight_scales:
            scaled = numpy_helper.to_array(tensor) * np.float32(factor)
            tensor.CopyFrom(numpy_helper.from_array(scaled.astype(np.float32), tensor.name))


def test_report_states_float_and_int8_map_and_the_drop(int8_run, capsys) -> None:
    out, report = int8_run
    assert report["float_map"] > 0.1, "the trained nano should detect its training images"
    assert 0 <= report["int8_map"] <= 1 and 0 <= report["int8_map50"] <= 1
    assert report["drop"] == pytest.approx(report["float_map"] - report["int8_map"])
    assert report["drop50"] == pytest.approx(report["float_map50"] - report["int8_map50"])
    assert report["int8_map"] > 0.5 * report["float_map"], "INT8 collapsed"
    # the file carries the report and says it is INT8
    meta = read_onnx_metadata(out)
    assert meta.precision == "int8"
    stored = meta.extra["int8"]
    assert stored["method"] == int8.DEFAULT_METHOD and stored["target"] == "tensorrt"
    assert stored["images"] == int(CALIB_IMAGES) and stored["drop"] == report["drop"]
    assert stored["settings"]["activation_type"] == "QInt8"
    assert stored["quantized_ops"]["Conv"] == sum(
        n.op_type == "Conv" for n in onnx.load(str(out)).graph.node
    )


def test_max_drop_below_the_drop_fails_and_keeps_no_file(int8_run, float_onnx, memorise_data,
                                                         capsys) -> None:  # fmt: skip
    _, report = int8_run
    out = float_onnx.with_name("refused.int8.onnx")
    limit = min(report["drop"], 0.0) - 0.01  # strictly below what this model loses
    code = main(["export", "int8", "--onnx", str(float_onnx), "--calib", str(memorise_data),
                 "--out", str(out), "--images", CALIB_IMAGES, "--eval", str(memorise_data),
                 "--max-drop", str(limit)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    assert "--max-drop" in captured.err and "no INT8 file written" in captured.err
    assert "drop" in captured.out  # the figures are still printed
    assert not out.exists()
    assert not list(out.parent.glob("int8.*")), "a temporary directory was left behind"


def test_qdq_is_signed_int8_zero_point_0_weights_per_channel(int8_run) -> None:
    out, _ = int8_run
    model = onnx.load(str(out))
    inits = _initializers(model)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8, (node.name, zero_point.dtype)
        assert not zero_point.any(), node.name
    producers = {o: n for n in model.graph.node for o in n.output}
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        weight_dq = producers[conv.input[1]]
        assert weight_dq.op_type == "DequantizeLinear", conv.name
        weight = inits[weight_dq.input[0]]
        scale = inits[weight_dq.input[1]]
        assert weight.dtype == np.int8
        assert scale.shape == (weight.shape[0],), f"{conv.name}: weights not per channel"
        if len(conv.input) > 2:  # the bias stays float (no INT32 DequantizeLinear)
            assert conv.input[2] in inits and inits[conv.input[2]].dtype == np.float32


def test_decode_sigmoids_and_output_stay_float(int8_run, float_onnx) -> None:
    out, report = int8_run
    model = onnx.load(str(out))
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    quantized_inputs = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    heads, tail = int8.split_at_prediction_convs(model.graph)
    assert len(heads) == 9  # box, objectness and class prediction at 3 levels
    by_name = {n.name: n for n in model.graph.node}
    tail_ops = {by_name[name].op_type for name in tail}
    assert {"Exp", "Sigmoid", "Concat"} <= tail_ops
    for name in tail:
        node = by_name[name]
        assert not dequantized & set(node.input), f"{node.op_type} {name} reads INT8 data"
        assert not quantized_inputs & set(node.output), f"{node.op_type} {name} is quantized"
    for name in heads:  # the prediction convs' outputs (raw logits, box offsets) are not rounded
        assert not quantized_inputs & set(by_name[name].output)
    output = next(n for n in model.graph.node if "output" in n.output)
    assert output.op_type == "Concat" and output.name in tail
    assert len(report["kept_float_nodes"]) >= len(tail)
    # the head's tail of the float graph is the same set of nodes
    assert set(tail) == set(int8.split_at_prediction_convs(onnx.load(str(float_onnx)).graph)[1])


def test_int8_graph_parses_in_tensorrt(int8_run) -> None:
    from trt_ops import assert_tensorrt_parsable  # tests/export/trt_ops.py: the parser's op list

    assert_tensorrt_parsable(int8_run[0])


def test_int8_model_serves_like_the_float_one(int8_run, float_onnx, memorise_data,
                                             tmp_path) -> None:  # fmt: skip
    """Over the training images, what is served (score >= ``PREDICT_CONF``) agrees: at least
    85 % of each model's served detections have a same-class counterpart in the other at IoU >=
    0.5, with a median IoU >= 0.8 and a median score gap <= 0.08; the same check fails on a copy
    whose activation scales are halved.

    Not the IoU of single detections (the former check: the three best of one image, IoU > 0.7,
    failed on an Intel Xeon with AMX at 0.63). Measured on an AMD EPYC (Zen 4, AVX-512 VNNI, no
    AMX), ONNX Runtime 1.32:

    - No integer kernel runs: Q/DQ sit on the conv inputs only (TensorRT form), so ONNX Runtime
      fuses no ``QLinearConv``; its optimised graph has 113 float ``Conv`` reading
      ``DequantizeLinear`` outputs and no ``QLinearConv``/``ConvInteger``. MLAS's AMX, VNNI and
      AVX2 u8s8 paths are never called: the rest is float arithmetic and element-wise Q/DQ.
    - The model is trained by the machine that runs the test, and training amplifies float
      rounding: the same seed with 1 or 2 torch threads ends with weights whose median relative
      difference is 0.79. Another CPU (other oneDNN/MKL kernels, more threads) trains another
      model. Of 11 models trained here (seeds, 1 or 2 threads) the former check fails on 2
      (IoU 0.63 and 0.41).
    - The INT8 boxes of this toy model move with 1-LSB changes: +-1 grey level of input noise,
      or activation scales x (1 + 1e-4 to 1e-3), moves the IoU of a top-4 INT8 box with its
      float box anywhere in 0.48-0.98 (the float box under the same noise stays >= 0.89).
    - Over those 11 models: counterparts >= 0.90, median IoU >= 0.85, median score gap <=
      0.05. One conv's weight scales x 2 gives a median IoU of 0.66-0.74 (6 models); all
      activation scales x 0.5 leaves counterparts for <= 0.64 of the float detections.
    """
    out, _ = int8_run
    images = [cv2.imread(str(path)) for path in calibration_images(memorise_data)]
    fp = Predictor.from_path(float_onnx).predict(images, conf=0.01)
    served = sum(int((d.scores >= PREDICT_CONF).sum()) for d in fp)
    assert served >= len(images) // 2, "the trained nano should detect its training images"
    q = Predictor.from_path(out).predict(images, conf=0.01)
    assert not _disagreement(fp, q)

    broken = onnx.load(str(out))
    _scale_activations(broken, 0.5)  # calibrated ranges halved: clipped activations
    onnx.save(broken, str(tmp_path / "broken.onnx"))
    assert _disagreement(
        fp, Predictor.from_path(tmp_path / "broken.onnx").predict(images, conf=0.01)
    )


def test_quantize_all_and_overrides(float_onnx, memorise_data, tmp_path) -> None:
    """--quantize-all puts the tail on INT8 too; --exclude keeps a named conv float."""
    model = onnx.load(str(float_onnx))
    int8.name_nodes(model)
    first_conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    out = tmp_path / "all.onnx"
    report = int8.quantize_int8(float_onnx, memorise_data, out, images=4, method="minmax",
                                quantize_all=True)  # fmt: skip
    assert report.settings["quantize_all"]
    assert {"Sigmoid", "Mul", "Conv"} <= set(report.quantized_ops)
    excluded = int8.quantize_int8(float_onnx, memorise_data, tmp_path / "ex.onnx", images=4,
                                  method="minmax", exclude=[first_conv])  # fmt: skip
    assert first_conv in excluded.kept_float_nodes
    graph = onnx.load(str(tmp_path / "ex.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    conv = next(n for n in graph.node if n.name == first_conv)
    assert conv.input[1] not in producers or producers[conv.input[1]].op_type != "DequantizeLinear"


def test_cpu_target_is_uint8_activations_and_runs(float_onnx, memorise_data, tmp_path) -> None:
    out = tmp_path / "cpu.onnx"
    report = int8.quantize_int8(float_onnx, memorise_data, out, images=4, method="minmax",
                                target="cpu")  # fmt: skip
    assert report.settings["activation_type"] == int8.TARGETS["cpu"].activation_type
    predictor = Predictor.from_path(out)
    assert predictor.metadata.precision == "int8"
    image = cv2.imread(str(calibration_images(memorise_data, 1)[0]))
    assert len(predictor.predict([image], conf=0.01)[0].scores) > 0


def test_errors_name_what_is_wrong(float_onnx, memorise_data, tmp_path, capsys) -> None:
    out = tmp_path / "x.onnx"
    base = ["export", "int8", "--onnx", str(float_onnx), "--out", str(out)]
    assert main([*base, "--calib", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main([*base, "--calib", str(memorise_data), "--exclude", "no_such_node"]) == 2
    assert "no_such_node" in capsys.readouterr().err
    assert main([*base, "--calib", str(memorise_data), "--max-drop", "0.01"]) == 2
    assert "--eval" in capsys.readouterr().err
    missing = tmp_path / "missing.onnx"
    assert main(["export", "int8", "--onnx", str(missing), "--calib", str(memorise_data),
                 "--out", str(out)]) == 2  # fmt: skip
    assert "missing.onnx" in capsys.readouterr().err
    assert not out.exists()


def test_calibration_images_are_the_serving_input(memorise_data, tmp_path) -> None:
    paths = calibration_images(memorise_data, 5)
    assert len(paths) == 5 and len(set(paths)) == 5
    everything = calibration_images(memorise_data)
    assert paths[0] == everything[0] and paths[-1] == everything[-1]  # spread over the split
    reader = ImageCalibrationReader(paths[:3], (128, 128), batch=2)
    first, second = reader.get_next(), reader.get_next()
    assert reader.get_next() is None
    assert first["images"].shape == (2, 3, 128, 128) and second["images"].shape[0] == 2
    expected = preprocess(cv2.imread(str(paths[2])), (128, 128))[0]
    np.testing.assert_array_equal(second["images"][0], expected)
    # a directory works; something else is an error that names it
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    assert calibration_images(tmp_path / "imgs") == [tmp_path / "imgs" / "a.png"]
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CalibrationError, match="notes.txt"):
        calibration_images(tmp_path / "notes.txt")


def test_cli_choices_match_the_library() -> None:
    assert set(cli_int8.METHODS) == set(int8.METHODS)
    assert set(cli_int8.TARGETS) == set(int8.TARGETS)
    assert cli_int8.DEFAULT_METHOD == int8.DEFAULT_METHOD
    assert cli_int8.DEFAULT_IMAGES == int8.DEFAULT_IMAGES
