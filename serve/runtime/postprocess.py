"""From network outputs to detections, without torch (NumPy and OpenCV only).

Two output layouts (see :mod:`serve.runtime.metadata`):

- ``raw``: ``output [B, N, 5 + C]`` decoded in the graph (``cx, cy, w, h`` in input pixels,
  objectness, class scores). :func:`postprocess_raw` applies the rule of
  :func:`detector.ops.postprocess`: each anchor votes for its best class with score
  ``obj * max(cls)``, anchors with ``score >= conf`` are kept, class-aware NMS at ``iou``
  (OpenCV's ``cv2.dnn.NMSBoxesBatched``), at most ``max_det`` per image, sorted by score.
- ``nms``: ``num_dets [B, 1]``, ``boxes [B, K, 4]`` (xyxy, input pixels), ``scores [B, K]``,
  ``classes [B, K]`` padded to K; :func:`postprocess_nms` unpads them.

Boxes stay in input (letterboxed) pixels; ``detector.core.preprocess.boxes_to_original`` maps them
back to the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from detector.core.defaults import MAX_DET, PREDICT_CONF, PREDICT_IOU


@dataclass
class RawDetections:
    """One image's detections in input (letterboxed) pixels, sorted by descending score."""

    boxes: np.ndarray  # [K, 4] float32 xyxy
    scores: np.ndarray  # [K] float32
    classes: np.ndarray  # [K] int64


def _empty() -> RawDetections:
    return RawDetections(
        np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    )


def _class_filter(classes: np.ndarray, wanted: Sequence[int] | None) -> np.ndarray:
    if wanted is None:
        return np.ones(classes.shape, bool)
    return np.isin(classes, np.asarray(list(wanted), np.int64))


def postprocess_raw(
    output: np.ndarray,
    conf: float = PREDICT_CONF,
    iou: float = PREDICT_IOU,
    max_det: int = MAX_DET,
    classes: Sequence[int] | None = None,
) -> list[RawDetections]:
    """``output [B, N, 5 + C]`` -> ``B`` :class:`RawDetections` (the rule of
    ``detector.ops.postprocess``; ``classes`` keeps only those class indices, after NMS)."""
    if output.ndim != 3 or output.shape[-1] < 6:
        raise ValueError(f"expected a [B, N, 5 + C] output, got shape {output.shape}")
    output = np.asarray(output, dtype=np.float32)
    best_class = output[..., 5:].argmax(axis=-1)  # [B, N]
    class_score = np.take_along_axis(output[..., 5:], best_class[..., None], axis=-1)[..., 0]
    scores = output[..., 4] * class_score  # [B, N]
    results = []
    for b in range(output.shape[0]):
        keep = np.flatnonzero(scores[b] >= conf)
        if keep.size == 0:
            results.append(_empty())
            continue
        cxcywh = output[b, keep, :4].astype(np.float64)
        xywh = np.concatenate((cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, 2:]), axis=1)
        image_scores = scores[b, keep]
        image_classes = best_class[b, keep].astype(np.int64)
        # the score filter is done above (>= conf, like postprocess); OpenCV's own is strict
        # (> 0 here, it asserts a threshold >= 0), so only a score of exactly 0 differs. Its
        # overlap test suppresses IoU > iou, as torchvision's does, on float boxes (Rect2d),
        # and it returns the kept indices by descending score.
        kept = cv2.dnn.NMSBoxesBatched(
            xywh.tolist(), image_scores.tolist(), image_classes.tolist(), 0.0, float(iou)
        )
        kept = np.asarray(kept, np.int64).reshape(-1)
        kept = kept[_class_filter(image_classes[kept], classes)][:max_det]
        xyxy = np.concatenate((xywh[kept, :2], xywh[kept, :2] + xywh[kept, 2:]), axis=1)
        results.append(
            RawDetections(
                xyxy.astype(np.float32), image_scores[kept].astype(np.float32), image_classes[kept]
            )
        )
    return results


def postprocess_nms(
    num_dets: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    conf: float = 0.0,
    max_det: int | None = None,
    class_filter: Sequence[int] | None = None,
) -> list[RawDetections]:
    """The NMS layout (``num_dets [B, 1]``, ``boxes [B, K, 4]``, ``scores [B, K]``,
    ``classes [B, K]``) -> ``B`` :class:`RawDetections`. The graph already applied its own score
    threshold and IoU; ``conf`` can only raise the threshold further, ``max_det`` lower K."""
    counts = np.asarray(num_dets).reshape(-1)
    results = []
    for b, count in enumerate(counts):
        count = int(count)
        image_scores = np.asarray(scores[b, :count], np.float32)
        image_classes = np.asarray(classes[b, :count], np.int64)
        keep = (image_scores >= conf) & _class_filter(image_classes, class_filter)
        index = np.flatnonzero(keep)
        if max_det is not None:
            index = index[:max_det]
        results.append(
            RawDetections(
                np.asarray(boxes[b, index], np.float32), image_scores[index], image_classes[index]
            )
        )
    return results
