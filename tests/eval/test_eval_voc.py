"""VOC mAP@0.5: perfect detections give 1.0; a hand-made case gives the hand-computed value."""

from __future__ import annotations

import numpy as np
import pytest

from detector.eval import average_precision, voc_map50


def _gt() -> dict:
    """Class 1 ("cell"): boxes A, B in image 1, C in image 2, plus a crowd box D in image 2.
    Class 2 ("dot"): one box in image 2. Class 3 ("ghost"): no boxes. Image 3: no boxes."""
    anns = [
        (1, 1, [0, 0, 10, 10], 0),  # A
        (1, 1, [50, 50, 10, 10], 0),  # B
        (2, 1, [20, 20, 10, 10], 0),  # C
        (2, 1, [70, 70, 20, 20], 1),  # D, crowd
        (2, 2, [0, 0, 5, 5], 0),
    ]
    return {
        "images": [{"id": i, "width": 100, "height": 100} for i in (1, 2, 3)],
        "categories": [
            {"id": 1, "name": "cell"},
            {"id": 2, "name": "dot"},
            {"id": 3, "name": "ghost"},
        ],
        "annotations": [
            {"id": n, "image_id": img, "category_id": cat, "bbox": box, "iscrowd": crowd}
            for n, (img, cat, box, crowd) in enumerate(anns, start=1)
        ],
    }


def _det(image_id: int, cat: int, box: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": cat, "bbox": box, "score": score}


HAND_DETECTIONS = [
    _det(1, 1, [0, 0, 10, 10], 0.9),  # TP on A
    _det(1, 1, [30, 30, 10, 10], 0.8),  # FP, overlaps nothing
    _det(2, 1, [21, 21, 10, 10], 0.7),  # TP on C (IoU 81/119 = 0.68)
    _det(1, 1, [1, 0, 10, 10], 0.6),  # FP, A already taken
    _det(1, 1, [50, 51, 10, 10], 0.5),  # TP on B
    _det(2, 1, [70, 70, 20, 20], 0.95),  # on the crowd box: ignored
    _det(3, 1, [0, 0, 10, 10], 0.05),  # FP on an image without gt, ranked last
]
# Ranked: TP, FP, TP, FP, TP, FP -> recall 1/3 1/3 2/3 2/3 1 1, precision 1 1/2 2/3 1/2 3/5 1/2.
# All-point: envelope 1 up to 1/3, 2/3 up to 2/3, 3/5 up to 1 -> (1 + 2/3 + 3/5) / 3 = 34/45.
# 11-point: t = 0 .. 0.3 -> 1 (4x), 0.4 .. 0.6 -> 2/3 (3x), 0.7 .. 1 -> 3/5 (4x) -> 8.4/11.
HAND_AP_ALL = 34 / 45
HAND_AP_11 = 8.4 / 11


def test_perfect_detections_score_one() -> None:
    gt = _gt()
    dets = [_det(a["image_id"], a["category_id"], a["bbox"], 1.0) for a in gt["annotations"]]
    result = voc_map50(gt, dets)
    assert result.map50 == 1.0
    assert result.per_class == {"cell": 1.0, "dot": 1.0, "ghost": -1.0}
    assert voc_map50(gt, dets, use_07_metric=True).map50 == pytest.approx(1.0)


def test_hand_case_all_point_and_11_point() -> None:
    gt = _gt()
    result = voc_map50(gt, HAND_DETECTIONS)
    assert result.per_class["cell"] == pytest.approx(HAND_AP_ALL, abs=1e-12)
    assert result.per_class["dot"] == 0.0  # gt but no detections
    assert result.per_class["ghost"] == -1.0  # no gt: left out of the mean
    assert result.map50 == pytest.approx((HAND_AP_ALL + 0.0) / 2, abs=1e-12)
    eleven = voc_map50(gt, HAND_DETECTIONS, use_07_metric=True)
    assert eleven.per_class["cell"] == pytest.approx(HAND_AP_11, abs=1e-12)
    assert eleven.to_dict()["metric"] == "11-point"


def test_iou_threshold_is_strict_and_order_of_input_does_not_matter() -> None:
    gt = _gt()
    shuffled = [HAND_DETECTIONS[i] for i in np.random.default_rng(0).permutation(7)]
    assert voc_map50(gt, shuffled).per_class["cell"] == pytest.approx(HAND_AP_ALL, abs=1e-12)
    # C detected with IoU 81/119 = 0.68: a hit at 0.5, a miss at 0.7
    only_c = [_det(2, 1, [21, 21, 10, 10], 0.7)]
    assert voc_map50(gt, only_c).per_class["cell"] == pytest.approx(1 / 3)
    assert voc_map50(gt, only_c, iou_thres=0.7).per_class["cell"] == 0.0


def test_average_precision_edge_cases() -> None:
    assert average_precision(np.array([]), np.array([])) == 0.0
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == 1.0
    assert average_precision(np.array([0.5]), np.array([1.0])) == 0.5
