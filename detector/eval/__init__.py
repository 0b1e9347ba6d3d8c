"""Evaluation: COCO metrics (pycocotools), VOC mAP@0.5 and plots.

``detector.eval.plots`` (matplotlib) is imported on its own, so scoring does not pay for it.
"""

from detector.eval.coco import (
    STAT_NAMES,
    ClassAP,
    CocoResult,
    detections_to_coco,
    evaluate_coco,
    format_per_class_table,
    voc_map50_from_predictions,
)
from detector.eval.voc import VocResult, average_precision, voc_map50

__all__ = [
    "STAT_NAMES",
    "ClassAP",
    "CocoResult",
    "VocResult",
    "average_precision",
    "detections_to_coco",
    "evaluate_coco",
    "format_per_class_table",
    "voc_map50",
    "voc_map50_from_predictions",
]
