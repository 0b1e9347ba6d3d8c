"""Post-processing: confidence = obj x cls, NMS against a brute-force reference, top-k, mapping
back to the original image, images with no detections."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.core.preprocess import boxes_to_original
from detector.ops import detections_to_original, postprocess


def iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def brute_force(pred: torch.Tensor, conf: float, iou_thres: float, agnostic: bool) -> list:
    """Greedy NMS written out: best-first, drop anything overlapping a kept box (same class
    unless agnostic) by more than ``iou_thres``."""
    rows = []
    for cx, cy, w, h, obj, *cls in pred.tolist():
        c = int(np.argmax(cls))
        score = obj * cls[c]
        if score >= conf:
            rows.append(([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], score, c))
    rows.sort(key=lambda r: -r[1])
    kept: list = []
    for box, score, c in rows:
        if all(iou(box, k[0]) <= iou_thres for k in kept if agnostic or k[2] == c):
            kept.append((box, score, c))
    return kept


def random_pred(seed: int, n: int = 300, classes: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cxcy = torch.rand(1, n, 2, generator=g) * 100
    wh = torch.rand(1, n, 2, generator=g) * 40 + 5
    scores = torch.rand(1, n, 1 + classes, generator=g)
    return torch.cat((cxcy, wh, scores), dim=-1)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("agnostic", [False, True])
def test_matches_brute_force(seed, agnostic):
    pred = random_pred(seed)
    (dets,) = postprocess(pred, conf_thres=0.2, iou_thres=0.5, class_agnostic=agnostic)
    ref = brute_force(pred[0], 0.2, 0.5, agnostic)
    assert dets.shape == (len(ref), 6)
    np.testing.assert_allclose(dets[:, :4].numpy(), [r[0] for r in ref], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dets[:, 4].numpy(), [r[1] for r in ref], rtol=1e-6)
    assert dets[:, 5].tolist() == [float(r[2]) for r in ref]


def test_confidence_is_objectness_times_best_class():
    pred = torch.tensor([[[50.0, 50.0, 20.0, 10.0, 0.5, 0.1, 0.8, 0.3]]])
    (dets,) = postprocess(pred, conf_thres=0.01)
    torch.testing.assert_close(dets, torch.tensor([[40.0, 45.0, 60.0, 55.0, 0.4, 1.0]]))


def test_no_detections_gives_empty_tensors():
    pred = random_pred(0)
    pred[..., 4] = 0.0  # no objectness anywhere
    out = postprocess(torch.cat([pred, pred]), conf_thres=0.01)
    assert len(out) == 2 and all(d.shape == (0, 6) for d in out)
    assert postprocess(torch.zeros(1, 0, 7))[0].shape == (0, 6)


def test_max_det_keeps_the_best():
    pred = random_pred(1, n=500)
    (all_dets,) = postprocess(pred, conf_thres=0.0, iou_thres=0.9)
    (top,) = postprocess(pred, conf_thres=0.0, iou_thres=0.9, max_det=10)
    torch.testing.assert_close(top, all_dets[:10])
    assert torch.all(top[:-1, 4] >= top[1:, 4])


def test_batch_images_are_independent():
    a, b = random_pred(2), random_pred(3)
    out = postprocess(torch.cat([a, b]))
    torch.testing.assert_close(out[1], postprocess(b)[0])


def test_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\[B, N, 5 \+ C\]"):
        postprocess(torch.zeros(10, 7))


def test_detections_to_original_matches_numpy_twin():
    dets = torch.tensor([[10.0, 20.0, 300.0, 100.0, 0.9, 2.0], [-5.0, 0.0, 50.0, 500.0, 0.5, 0.0]])
    ratio, hw = 0.5, (300, 400)
    out = detections_to_original(dets, ratio, hw)
    np.testing.assert_allclose(
        out[:, :4].numpy(), boxes_to_original(dets[:, :4].numpy(), ratio, hw), rtol=1e-6
    )
    torch.testing.assert_close(out[:, 4:], dets[:, 4:])
    assert out[0, :4].tolist() == [20.0, 40.0, 400.0, 200.0]
