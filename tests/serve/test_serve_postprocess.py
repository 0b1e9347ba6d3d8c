"""The torch-free post-processing equals ``detector.ops.postprocess`` (torchvision NMS)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.ops import postprocess
from serve.runtime.postprocess import postprocess_nms, postprocess_raw


def crowded_predictions(seed: int, batch: int = 3, anchors: int = 400, classes: int = 4):
    """``[B, N, 5 + C]`` decoded-looking predictions: boxes in clusters (so NMS has work),
    distinct scores (no ties), one image with nothing above 0.3."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(20, 300, (batch, 12, 2))
    pick = rng.integers(0, 12, (batch, anchors))
    cxcy = np.take_along_axis(centres, pick[..., None], axis=1) + rng.normal(
        0, 6, (batch, anchors, 2)
    )
    wh = rng.uniform(15, 80, (batch, anchors, 2))
    obj = rng.uniform(0, 1, (batch, anchors, 1))
    cls = rng.uniform(0, 1, (batch, anchors, classes))
    pred = np.concatenate((cxcy, wh, obj, cls), axis=-1).astype(np.float32)
    pred[-1, :, 4] *= 0.25  # the last image: every score below 0.25
    return pred


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    ("conf", "iou", "max_det"), [(0.25, 0.45, 300), (0.01, 0.65, 30), (0.5, 0.3, 5)]
)
def test_raw_equals_torch_postprocess(seed, conf, iou, max_det):
    pred = crowded_predictions(seed)
    got = postprocess_raw(pred, conf=conf, iou=iou, max_det=max_det)
    ref = postprocess(torch.from_numpy(pred), conf_thres=conf, iou_thres=iou, max_det=max_det)
    assert len(got) == len(ref) == 3
    counts = []
    for g, r in zip(got, ref):
        r = r.numpy()
        counts.append(len(r))
        assert g.boxes.shape == (len(r), 4) and g.boxes.dtype == np.float32
        np.testing.assert_array_equal(g.classes, r[:, 5].astype(np.int64))
        np.testing.assert_array_equal(g.scores, r[:, 4])
        np.testing.assert_allclose(g.boxes, r[:, :4], atol=1e-4)
    if conf == 0.5:
        assert counts[-1] == 0  # the image with nothing above the threshold
    assert max(counts) > 1  # something survived NMS and something was suppressed
    assert all(c < 400 for c in counts)


def test_class_filter_and_empty():
    pred = crowded_predictions(0)
    every = postprocess_raw(pred, conf=0.1)
    only = postprocess_raw(pred, conf=0.1, classes=[2])
    for e, o in zip(every, only):
        np.testing.assert_array_equal(o.scores, e.scores[e.classes == 2])
    empty = postprocess_raw(np.zeros((2, 10, 7), np.float32))
    assert [len(d.scores) for d in empty] == [0, 0]
    with pytest.raises(ValueError, match=r"\[B, N, 5 \+ C\]"):
        postprocess_raw(np.zeros((10, 7), np.float32))


def test_nms_layout_unpads():
    num_dets = np.array([[2], [0], [3]], np.int32)
    boxes = np.arange(3 * 4 * 4, dtype=np.float32).reshape(3, 4, 4)
    scores = np.array([[0.9, 0.4, 0, 0], [0, 0, 0, 0], [0.8, 0.7, 0.3, 0]], np.float32)
    classes = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [2, 2, 1, 0]], np.int32)
    got = postprocess_nms(num_dets, boxes, scores, classes)
    assert [len(d.scores) for d in got] == [2, 0, 3]
    np.testing.assert_array_equal(got[2].boxes, boxes[2, :3])
    assert got[2].classes.dtype == np.int64
    raised = postprocess_nms(num_dets, boxes, scores, classes, conf=0.5, max_det=1)
    assert [d.scores.tolist() for d in raised] == [[pytest.approx(0.9)], [], [pytest.approx(0.8)]]
    assert postprocess_nms(num_dets, boxes, scores, classes, class_filter=[2])[2].scores.size == 2
