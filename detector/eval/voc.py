"""VOC-style mAP@0.5, in our own numpy code.

Per class: detections sorted by score (stable), each compared with the ground-truth box of the
same image that it overlaps most; IoU > threshold and that box not yet taken is a true positive,
anything else a false positive (as in the VOC devkit: no fall-back to the second-best box).
``iscrowd`` ground truth plays VOC's "difficult": a detection on it is neither hit nor miss.
AP is the area under the precision envelope (all-point interpolation, VOC 2010+) or the mean of the
envelope at recall 0, 0.1, ..., 1 (11-point, VOC 2007). Boxes are continuous (no ``+1`` pixel).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detector.core.boxes import box_iou_numpy, xywh_to_xyxy


@dataclass(frozen=True)
class VocResult:
    """``map50``: mean AP over classes with ground truth; ``per_class``: name -> AP (``-1``
    for a class with no ground truth)."""

    map50: float
    per_class: dict[str, float]
    use_07_metric: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "mAP50": self.map50,
            "per_class": dict(self.per_class),
            "metric": "11-point" if self.use_07_metric else "all-point",
        }


def average_precision(
    recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False
) -> float:
    """AP from ``[D]`` recall and precision at each detection (sorted by score, cumulative).

    All-point: the area under the monotone precision envelope. 11-point: the mean of the
    envelope's maximum precision at recall >= t for t in 0, 0.1, ..., 1.
    """
    if use_07_metric:
        ap = 0.0
        for t in np.linspace(0.0, 1.0, 11):
            above = precision[recall >= t - 1e-12]
            ap += float(above.max()) if above.size else 0.0
        return ap / 11.0
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _class_ap(
    gts: dict[int, tuple[np.ndarray, np.ndarray]],
    dets: list[tuple[int, float, np.ndarray]],
    iou_thres: float,
    use_07_metric: bool,
) -> float:
    """AP of one class. ``gts``: image id -> (``[M, 4]`` xyxy, ``[M]`` crowd flags);
    ``dets``: (image id, score, ``[4]`` xyxy). ``-1`` when the class has no (non-crowd) gt."""
    npos = sum(int((~crowd).sum()) for _, crowd in gts.values())
    if npos == 0:
        return -1.0
    if not dets:
        return 0.0
    scores = np.array([d[1] for d in dets])
    order = np.argsort(-scores, kind="stable")
    matched = {img: np.zeros(len(boxes), dtype=bool) for img, (boxes, _) in gts.items()}
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for rank, i in enumerate(order):
        image_id, _, box = dets[i]
        if image_id not in gts or len(gts[image_id][0]) == 0:
            fp[rank] = 1
            continue
        boxes, crowd = gts[image_id]
        ious = box_iou_numpy(box[None], boxes)[0]
        j = int(np.argmax(ious))
        if ious[j] > iou_thres:
            if crowd[j]:
                continue  # "difficult": ignored
            if not matched[image_id][j]:
                matched[image_id][j] = True
                tp[rank] = 1
            else:
                fp[rank] = 1
        else:
            fp[rank] = 1
    tp_cum = np.cumsum(tp)
    fp_cum = np.cumsum(fp)
    recall = tp_cum / npos
    precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
    return average_precision(recall, precision, use_07_metric)


def voc_map50(
    ground_truth: Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    *,
    iou_thres: float = 0.5,
    use_07_metric: bool = False,
) -> VocResult:
    """VOC mAP at IoU ``iou_thres`` of COCO-format ground truth and COCO result dicts.

    Args:
        ground_truth: COCO dict (``images``, ``annotations`` with ``bbox`` xywh and optional
            ``iscrowd``, ``categories``).
        detections: ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``.
        iou_thres: a detection is a hit when its IoU is strictly greater than this.
        use_07_metric: 11-point interpolation (VOC 2007) instead of all-point.
    """
    gts: dict[int, dict[int, tuple[list, list]]] = defaultdict(
        lambda: defaultdict(lambda: ([], []))
    )
    for ann in ground_truth.get("annotations", []):
        boxes, crowd = gts[int(ann["category_id"])][int(ann["image_id"])]
        boxes.append(ann["bbox"])
        crowd.append(bool(ann.get("iscrowd", 0)))
    dets: dict[int, list[tuple[int, float, np.ndarray]]] = defaultdict(list)
    for det in detections:
        box = xywh_to_xyxy(np.asarray(det["bbox"], dtype=np.float64))
        dets[int(det["category_id"])].append((int(det["image_id"]), float(det["score"]), box))

    per_class: dict[str, float] = {}
    for cat in ground_truth["categories"]:
        cat_id = int(cat["id"])
        cls_gts = {
            img: (xywh_to_xyxy(np.asarray(b, dtype=np.float64).reshape(-1, 4)), np.array(c))
            for img, (b, c) in gts.get(cat_id, {}).items()
        }
        per_class[str(cat.get("name", cat_id))] = _class_ap(
            cls_gts, dets.get(cat_id, []), iou_thres, use_07_metric
        )
    valid = [ap for ap in per_class.values() if ap >= 0]
    map50 = float(np.mean(valid)) if valid else -1.0
    return VocResult(map50=map50, per_class=per_class, use_07_metric=use_07_metric)
