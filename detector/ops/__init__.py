"""Inference operations on model outputs (plain functions on tensors)."""

from detector.defaults import EVAL_CONF, MAX_DET, NMS_IOU, PREDICT_CONF
from detector.ops.postprocess import detections_to_original, postprocess

__all__ = [
    "EVAL_CONF",
    "MAX_DET",
    "NMS_IOU",
    "PREDICT_CONF",
    "detections_to_original",
    "postprocess",
]
