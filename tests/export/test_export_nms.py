"""``--nms``: the in-graph ONNX ``NonMaxSuppression`` gives the detections of
``detector.ops.postprocess``: the same boxes, scores, classes and order, including images with no
detections and batches whose images have different counts, at fixed and dynamic batch."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from detector.ops import postprocess
from export.nms import InGraphNms
from export.onnx import export_onnx, load_model
from export.verify import sample_images, verify_onnx
from serve.runtime.metadata import NMS_OUTPUTS, read_onnx_metadata
from serve.runtime.predictor import Predictor


def predictions(seed: int, batch: int = 4, anchors: int = 500, classes: int = 3) -> np.ndarray:
    """Decoded-looking ``[B, N, 5 + C]``: clustered boxes (NMS has work), distinct scores; image
    1 has few high scores, the last none above 0.3."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(20, 300, (batch, 10, 2))
    pick = rng.integers(0, 10, (batch, anchors))
    cxcy = np.take_along_axis(centres, pick[..., None], 1) + rng.normal(0, 5, (batch, anchors, 2))
    wh = rng.uniform(15, 80, (batch, anchors, 2))
    obj = rng.uniform(0, 1, (batch, anchors, 1))
    obj[1] **= 4
    obj[-1] *= 0.3
    cls = rng.uniform(0, 1, (batch, anchors, classes))
    return np.concatenate((cxcy, wh, obj, cls), axis=-1).astype(np.float32)


def nms_only_session(tmp_path, conf: float, iou: float, k: int) -> ort.InferenceSession:
    """The NMS part alone as an ONNX graph with a dynamic batch (input: decoded predictions)."""
    path = tmp_path / f"nms_{conf}_{iou}_{k}.onnx"
    names = list(NMS_OUTPUTS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            InGraphNms(conf, iou, k).eval(),
            (torch.from_numpy(predictions(0)),),
            str(path),
            input_names=["pred"],
            output_names=names,
            dynamic_axes={n: {0: "batch"} for n in ["pred", *names]},
            opset_version=17,
            dynamo=False,
        )
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def assert_same_as_postprocess(outputs, pred, conf, iou, k):
    num_dets, boxes, scores, classes = outputs
    assert num_dets.shape == (len(pred), 1) and boxes.shape == (len(pred), k, 4)
    assert scores.shape == classes.shape == (len(pred), k)
    reference = postprocess(torch.from_numpy(pred), conf_thres=conf, iou_thres=iou, max_det=k)
    counts = []
    for b, ref in enumerate(reference):
        ref = ref.numpy()
        n = int(num_dets[b, 0])
        counts.append(n)
        assert n == len(ref)
        np.testing.assert_array_equal(classes[b, :n], ref[:, 5].astype(np.int64))
        np.testing.assert_allclose(scores[b, :n], ref[:, 4], rtol=1e-6)
        np.testing.assert_allclose(boxes[b, :n], ref[:, :4], atol=1e-4)
        # padding is zeros
        assert not scores[b, n:].any() and not boxes[b, n:].any() and not classes[b, n:].any()
    return counts


@pytest.mark.parametrize(("conf", "iou", "k"), [(0.3, 0.45, 100), (0.5, 0.65, 20), (0.05, 0.3, 7)])
def test_nms_graph_equals_postprocess(tmp_path, conf, iou, k):
    session = nms_only_session(tmp_path, conf, iou, k)
    seen = set()
    for seed in range(3):
        pred = predictions(seed)
        counts = assert_same_as_postprocess(session.run(None, {"pred": pred}), pred, conf, iou, k)
        seen.add(tuple(counts))
        # a dynamic batch: one image alone gives the same as in the batch
        single = session.run(None, {"pred": pred[1:2]})
        assert int(single[0][0, 0]) == counts[1]
    if k == 100:
        assert any(0 in c for c in seen)  # an image with no detections
        assert all(len(set(c)) > 1 for c in seen)  # different counts in one batch
    if k == 7:
        assert any(7 in c for c in seen)  # K cuts


def test_eager_module_equals_postprocess():
    pred = predictions(5)
    with torch.no_grad():
        outputs = [t.numpy() for t in InGraphNms(0.3, 0.45, 50)(torch.from_numpy(pred))]
    assert_same_as_postprocess(outputs, pred, 0.3, 0.45, 50)


def test_exported_nms_model(golden_ckpt, tmp_path):
    """End to end with a dynamic batch (the fixed-batch graph differs only in its shapes; the
    graph alone is tested at several batch sizes above)."""
    conf, iou = 0.8, 0.45
    out = export_onnx(golden_ckpt, tmp_path / "m.onnx", dynamic=True, nms=True,
                      score_threshold=conf, iou_threshold=iou, max_detections=1000)  # fmt: skip
    meta = read_onnx_metadata(out)
    assert meta.layout == "nms" and meta.batch is None
    # K is clamped to the 336 anchors of a 128 px input
    assert (meta.nms.score_threshold, meta.nms.iou_threshold, meta.nms.max_detections) == (
        conf,
        iou,
        336,
    )
    proto = onnx.load(str(out))
    assert [o.name for o in proto.graph.output] == list(NMS_OUTPUTS)
    assert sum(n.op_type == "NonMaxSuppression" for n in proto.graph.node) == 1
    model, _ = load_model(golden_ckpt)
    images, _ = sample_images(3)
    images.append(np.full((90, 120, 3), 114, np.uint8))  # blank: nothing to detect
    predictor = Predictor.from_path(out, providers=["CPUExecutionProvider"])
    batch, _ = predictor.prepare(images)
    got = predictor.run(batch)
    with torch.no_grad():
        raw = model(torch.from_numpy(batch)).numpy()
    counts = []
    for b, ref in enumerate(postprocess(torch.from_numpy(raw), conf, iou, max_det=336)):
        ref = ref.numpy()
        n = int(got["num_dets"][b, 0])
        counts.append(n)
        assert n == len(ref)
        np.testing.assert_array_equal(got["classes"][b, :n], ref[:, 5].astype(np.int64))
        np.testing.assert_allclose(got["scores"][b, :n], ref[:, 4], atol=1e-5)
        np.testing.assert_allclose(got["boxes"][b, :n], ref[:, :4], atol=1e-3)
    assert counts[-1] == 0 and len(set(counts)) > 1, counts
    report = verify_onnx(out, model, record=False)
    assert report.ok, report.summary()
    assert report.detections_onnx == report.detections_torch > 0
    # the runtime's detections: the graph's, mapped back; conf only filters further
    dets = predictor.predict(images, conf=0.0)
    assert [len(d.scores) for d in dets] == counts
    assert [len(d.scores) for d in predictor.predict(images, conf=0.85)] <= counts


def test_nms_options_are_checked(nano_ckpt, tmp_path):
    with pytest.raises(ValueError, match="score threshold"):
        export_onnx(nano_ckpt, tmp_path / "m.onnx", nms=True, score_threshold=0.0)
    with pytest.raises(ValueError, match="TopK"):
        export_onnx(nano_ckpt, tmp_path / "m.onnx", nms=True, imgsz=640, max_detections=5000)
    assert not (tmp_path / "m.onnx").exists()
