"""Inference operations on model outputs (plain functions on tensors)."""

from detector.core.defaults import EVAL_CONF, EVAL_IOU, MAX_DET, PREDICT_CONF
from detector.ops.postprocess import detections_to_original, postprocess

__all__ = [
    "EVAL_CONF",
    "MAX_DET",
    "EVAL_IOU",
    "PREDICT_CONF",
    "detections_to_original",
    "postprocess",
]
