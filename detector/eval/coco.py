"""COCO box evaluation with pycocotools, plus a per-class table and a JSON record.

``evaluate_coco`` takes the ground truth as a COCO-format dict (``images``, ``annotations`` with
``bbox`` xywh / ``area`` / ``iscrowd``, ``categories``) and detections as COCO result dicts
(``image_id``, ``category_id``, ``bbox`` xywh, ``score``). It runs ``COCOeval`` exactly as the
official scripts do (so the numbers equal a hand-run on the same files), with pycocotools'
prints silenced, and reads the per-class AP from ``COCOeval.eval["precision"]``.

Undefined values follow pycocotools: ``-1`` where there is no ground truth to measure against
(a class with no boxes, an area range with no boxes). No detections at all give ``0`` wherever
ground truth exists.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.core.boxes import xyxy_to_xywh
from detector.eval.voc import VocResult, voc_map50

LOGGER = logging.getLogger(__name__)

# The 12 numbers of COCOeval.summarize(), in its order.
STAT_NAMES: tuple[str, ...] = (
    "AP",  # IoU 0.50:0.95, all areas, 100 dets
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)

# (kind, IoU, area, maxDets) of each entry of STAT_NAMES, as COCOeval.summarize() prints them
_SUMMARY_ROWS: tuple[tuple[str, str, str, int], ...] = (
    ("AP", "0.50:0.95", "all", 100),
    ("AP", "0.50", "all", 100),
    ("AP", "0.75", "all", 100),
    ("AP", "0.50:0.95", "small", 100),
    ("AP", "0.50:0.95", "medium", 100),
    ("AP", "0.50:0.95", "large", 100),
    ("AR", "0.50:0.95", "all", 1),
    ("AR", "0.50:0.95", "all", 10),
    ("AR", "0.50:0.95", "all", 100),
    ("AR", "0.50:0.95", "small", 100),
    ("AR", "0.50:0.95", "medium", 100),
    ("AR", "0.50:0.95", "large", 100),
)
_SUMMARY_LINE = " {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}"


@dataclass(frozen=True)
class ClassAP:
    """AP of one category (``-1`` when it has no ground truth)."""

    category_id: int
    name: str
    num_gt: int  # non-crowd ground-truth boxes
    ap: float  # IoU 0.50:0.95, all areas, 100 detections per image
    ap50: float  # IoU 0.50


@dataclass
class CocoResult:
    """The outcome of one COCO evaluation.

    ``stats`` holds the 12 standard numbers under ``STAT_NAMES``; ``precision`` is
    ``COCOeval.eval["precision"]``, ``[T=10 IoUs, R=101 recalls, K classes, A=4 areas,
    M=3 maxDets]`` (``-1`` where undefined), for PR curves; it is not written to JSON.
    """

    stats: dict[str, float]
    per_class: list[ClassAP]
    num_images: int
    num_detections: int
    precision: np.ndarray | None = field(default=None, repr=False)
    voc: VocResult | None = None

    @property
    def mAP(self) -> float:  # noqa: N802 - the name users know
        """AP at IoU 0.50:0.95."""
        return self.stats["AP"]

    @property
    def mAP50(self) -> float:  # noqa: N802
        """AP at IoU 0.50."""
        return self.stats["AP50"]

    @property
    def class_names(self) -> list[str]:
        """Category names in the order of ``precision``'s class axis."""
        return [c.name for c in self.per_class]

    def summary(self) -> str:
        """The 12 numbers in the layout of ``COCOeval.summarize()``'s printout."""
        return "\n".join(
            _SUMMARY_LINE.format(
                "Average Precision" if kind == "AP" else "Average Recall",
                f"({kind})",
                iou,
                area,
                max_dets,
                self.stats[name],
            )
            for name, (kind, iou, area, max_dets) in zip(STAT_NAMES, _SUMMARY_ROWS, strict=True)
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``mAP``, ``mAP50``, the 12 stats, ``per_class`` and counts."""
        out: dict[str, Any] = {"mAP": self.mAP, "mAP50": self.mAP50}
        out.update(self.stats)
        out["per_class"] = {
            c.name: {"category_id": c.category_id, "num_gt": c.num_gt, "AP": c.ap, "AP50": c.ap50}
            for c in self.per_class
        }
        out["num_images"] = self.num_images
        out["num_detections"] = self.num_detections
        if self.voc is not None:
            out["voc"] = self.voc.to_dict()
        return out

    def to_json(self, path: str | Path) -> Path:
        """Write ``to_dict()`` to ``path`` (parents created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def _validate_ground_truth(gt: Mapping[str, Any]) -> None:
    for key in ("images", "categories"):
        if key not in gt:
            raise ValueError(f"ground truth: missing the COCO key {key!r}")
    for i, ann in enumerate(gt.get("annotations", [])):
        for key in ("image_id", "category_id", "bbox"):
            if key not in ann:
                raise ValueError(f"ground truth: annotations[{i}] has no {key!r}")


def _validate_detections(
    detections: Sequence[Mapping[str, Any]], image_ids: set[int], category_ids: set[int]
) -> None:
    for i, det in enumerate(detections):
        for key in ("image_id", "category_id", "bbox", "score"):
            if key not in det:
                raise ValueError(f"detections[{i}] has no {key!r}")
        if det["image_id"] not in image_ids:
            raise ValueError(
                f"detections[{i}]: image_id {det['image_id']} is not in the ground truth"
            )
        if det["category_id"] not in category_ids:
            raise ValueError(
                f"detections[{i}]: category_id {det['category_id']} is not in the ground truth"
                f" categories {sorted(category_ids)}"
            )
        if len(det["bbox"]) != 4:
            raise ValueError(f"detections[{i}]: bbox must be [x, y, w, h], got {det['bbox']}")


def _coco_from_dict(gt: Mapping[str, Any]) -> COCO:
    """A ``COCO`` object over a copy of ``gt`` (no file, no prints).

    Annotation keys that pycocotools needs but minimal converters leave out are filled in:
    ``area`` = box ``w * h``, ``iscrowd`` = 0, ``id`` = a fresh unique number.
    """
    coco = COCO()
    dataset = copy.deepcopy(dict(gt))
    anns = dataset.setdefault("annotations", [])
    next_id = 1 + max((int(a["id"]) for a in anns if "id" in a), default=0)
    for ann in anns:
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
        ann.setdefault("iscrowd", 0)
        if "id" not in ann:
            ann["id"] = next_id
            next_id += 1
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _load_results(coco_gt: COCO, detections: Sequence[Mapping[str, Any]]) -> COCO:
    """``coco_gt.loadRes`` on a copy of ``detections``; an empty list gives an empty result set
    (``loadRes`` itself fails on one)."""
    if detections:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes(copy.deepcopy(list(detections)))
    empty = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    return _coco_from_dict(empty)


def _per_class(coco_gt: COCO, precision: np.ndarray, cat_ids: list[int]) -> list[ClassAP]:
    """AP and AP50 per category from ``precision[T, R, K, A, M]`` (area all, 100 dets)."""
    out = []
    for k, cat_id in enumerate(cat_ids):
        p = precision[:, :, k, 0, -1]  # [T, R]
        valid = p[p > -1]
        ap = float(np.mean(valid)) if valid.size else -1.0
        p50 = p[0][p[0] > -1]
        ap50 = float(np.mean(p50)) if p50.size else -1.0
        num_gt = len(coco_gt.getAnnIds(catIds=[cat_id], iscrowd=False))
        name = str(coco_gt.cats[cat_id].get("name", cat_id))
        out.append(ClassAP(category_id=int(cat_id), name=name, num_gt=num_gt, ap=ap, ap50=ap50))
    return out


def evaluate_coco(
    ground_truth: Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    *,
    with_voc: bool = False,
) -> CocoResult:
    """COCO box metrics of ``detections`` against ``ground_truth``.

    Args:
        ground_truth: COCO-format dict (``images``, ``annotations``, ``categories``); not modified.
        detections: COCO result dicts (``image_id``, ``category_id``, ``bbox`` xywh, ``score``);
            not modified. May be empty.
        with_voc: also compute the VOC-style mAP@0.5 (``voc_map50``) into ``result.voc``.

    Raises:
        ValueError: a missing key, or a detection whose image or category is not in the ground
            truth (pycocotools would assert or silently drop it).
    """
    _validate_ground_truth(ground_truth)
    image_ids = {int(img["id"]) for img in ground_truth["images"]}
    category_ids = {int(cat["id"]) for cat in ground_truth["categories"]}
    _validate_detections(detections, image_ids, category_ids)

    coco_gt = _coco_from_dict(ground_truth)
    coco_dt = _load_results(coco_gt, detections)
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats, strict=True)}
    precision = np.asarray(evaluator.eval["precision"])
    result = CocoResult(
        stats=stats,
        per_class=_per_class(coco_gt, precision, list(evaluator.params.catIds)),
        num_images=len(image_ids),
        num_detections=len(detections),
        precision=precision,
    )
    if with_voc:
        result.voc = voc_map50(ground_truth, detections)
    LOGGER.debug("COCO eval: mAP %.4f mAP50 %.4f", result.mAP, result.mAP50)
    return result


def detections_to_coco(
    per_image: Sequence[Any],
    image_ids: Sequence[int],
    category_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """Model output -> COCO result dicts.

    Args:
        per_image: one ``ndarray | Tensor[K, 6]`` per image: ``x1, y1, x2, y2`` in original-image
            pixels, score, contiguous class index (``None`` or ``[0, 6]`` for no detections).
        image_ids: the COCO image id of each entry of ``per_image``.
        category_ids: contiguous class index -> COCO category id.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]`` of Python floats.
    """
    if len(per_image) != len(image_ids):
        raise ValueError(
            f"detections_to_coco: {len(per_image)} detection arrays but {len(image_ids)} image ids"
        )
    out: list[dict[str, Any]] = []
    for dets, image_id in zip(per_image, image_ids, strict=True):
        if dets is None:
            continue
        if hasattr(dets, "detach"):  # torch.Tensor
            dets = dets.detach().float().cpu().numpy()
        dets = np.asarray(dets, dtype=np.float64)
        if dets.size == 0:
            continue
        if dets.ndim != 2 or dets.shape[1] != 6:
            raise ValueError(
                f"detections_to_coco: image {image_id}: expected [K, 6] "
                f"(x1, y1, x2, y2, score, class), got shape {list(dets.shape)}"
            )
        classes = dets[:, 5].astype(np.int64)
        bad = (classes < 0) | (classes >= len(category_ids))
        if bad.any():
            raise ValueError(
                f"detections_to_coco: image {image_id}: class index {int(classes[bad][0])} is "
                f"outside 0..{len(category_ids) - 1}"
            )
        xywh = xyxy_to_xywh(dets[:, :4])
        for box, score, cls in zip(
            xywh.tolist(), dets[:, 4].tolist(), classes.tolist(), strict=True
        ):
            out.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_ids[cls]),
                    "bbox": box,
                    "score": score,
                }
            )
    return out


def _fmt(value: float) -> str:
    return "    -" if value < 0 else f"{value:.3f}"


def format_per_class_table(result: CocoResult) -> str:
    """A fixed-width table: a row per class (gt count, AP, AP50[, VOC AP50]) and an ``all`` row."""
    voc = result.voc
    width = max([len("class"), len("all")] + [len(c.name) for c in result.per_class])
    header = f"{'class':<{width}}  {'gt':>6}  {'AP':>6}  {'AP50':>6}"
    if voc is not None:
        header += f"  {'VOC50':>6}"
    lines = [header, "-" * len(header)]
    for c in result.per_class:
        row = f"{c.name:<{width}}  {c.num_gt:>6d}  {_fmt(c.ap):>6}  {_fmt(c.ap50):>6}"
        if voc is not None:
            row += f"  {_fmt(voc.per_class.get(c.name, -1.0)):>6}"
        lines.append(row)
    total_gt = sum(c.num_gt for c in result.per_class)
    row = f"{'all':<{width}}  {total_gt:>6d}  {_fmt(result.mAP):>6}  {_fmt(result.mAP50):>6}"
    if voc is not None:
        row += f"  {_fmt(voc.map50):>6}"
    lines.append(row)
    return "\n".join(lines)


class _PredictionsLike(Protocol):
    image_ids: list[int]
    detections: list[Any]  # per image [K, 6]: x1, y1, x2, y2 (original pixels), score, class


class _DatasetLike(Protocol):
    category_ids: list[int]

    def coco_ground_truth(self) -> dict[str, Any]: ...


def voc_map50_from_predictions(
    predictions: _PredictionsLike, dataset: _DatasetLike, use_07_metric: bool = False
) -> float:
    """VOC mAP@0.5 of a split's predictions (``image_ids`` + per-image ``[K, 6]`` detections)
    against ``dataset.coco_ground_truth()``."""
    results = detections_to_coco(
        predictions.detections, predictions.image_ids, dataset.category_ids
    )
    return voc_map50(dataset.coco_ground_truth(), results, use_07_metric=use_07_metric).map50
