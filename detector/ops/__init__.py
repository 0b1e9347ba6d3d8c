"""Inference operations on model outputs (plain functions on tensors).

Their threshold defaults live in :mod:`detector.core.defaults`.
"""

from detector.ops.postprocess import detections_to_original, postprocess

__all__ = ["detections_to_original", "postprocess"]
