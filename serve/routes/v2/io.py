"""The tensors of the v2 inference protocol (KServe v2 / Triton), shared by our server's ``/v2``
routes and the Triton model repository that ``detector export triton`` writes.

One contract, so a ``tritonclient`` program works unchanged against either:

- input :data:`IMAGE_INPUT` (``BYTES``, shape ``[B, 1]``): each element one encoded image file
  (JPEG, PNG, BMP, WebP, ...), exactly the bytes a client would upload to ``/v1/detect``;
- outputs (K = the ``max_det`` of the request, by default
  :data:`detector.core.defaults.MAX_DET`, zero-padded):

  - ``num_dets`` ``INT32 [B, 1]``: how many rows of the next three are real;
  - ``boxes`` ``FP32 [B, K, 4]``: ``x1, y1, x2, y2`` in the ORIGINAL image's pixels;
  - ``scores`` ``FP32 [B, K]``;
  - ``classes`` ``INT32 [B, K]``: class ids (names: ``GET /v2/models/{name}`` or ``/v1/models``).

Thresholds travel as request parameters ``conf``, ``iou``, ``max_det`` where the server reads
them; otherwise the defaults of :mod:`detector.core.defaults` apply (the same as
``/v1/detect``'s).

Plain NumPy, no web framework: the Triton model of ``detector export triton`` imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from detector.core.defaults import MAX_DET

IMAGE_INPUT = "IMAGE"
OUTPUT_NAMES = ("num_dets", "boxes", "scores", "classes")
# name -> (v2 datatype, NumPy dtype, shape of one batch item with K for the padding)
OUTPUT_SPECS: dict[str, tuple[str, type, tuple[str | int, ...]]] = {
    "num_dets": ("INT32", np.int32, (1,)),
    "boxes": ("FP32", np.float32, ("K", 4)),
    "scores": ("FP32", np.float32, ("K",)),
    "classes": ("INT32", np.int32, ("K",)),
}


class _DetectionsLike(Protocol):
    boxes: np.ndarray  # [k, 4]
    scores: np.ndarray  # [k]
    classes: np.ndarray  # [k]


def detections_to_tensors(
    detections: Sequence[_DetectionsLike], max_det: int = MAX_DET
) -> dict[str, np.ndarray]:
    """Per-image detections (``serve.runtime.predictor.Detections``, boxes in original pixels) ->
    the padded output tensors above, batch ``B = len(detections)``, ``K = max_det``."""
    batch = len(detections)
    num_dets = np.zeros((batch, 1), np.int32)
    boxes = np.zeros((batch, max_det, 4), np.float32)
    scores = np.zeros((batch, max_det), np.float32)
    classes = np.zeros((batch, max_det), np.int32)
    for i, det in enumerate(detections):
        k = min(len(det.scores), max_det)
        num_dets[i, 0] = k
        boxes[i, :k] = det.boxes[:k]
        scores[i, :k] = det.scores[:k]
        classes[i, :k] = det.classes[:k]
    return {"num_dets": num_dets, "boxes": boxes, "scores": scores, "classes": classes}
