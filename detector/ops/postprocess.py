"""From decoded predictions to detections: confidence filter, NMS, top-k, back to the image.

``pred`` is the model's evaluation output ``Tensor[B, N, 5 + C]`` (``cx, cy, w, h`` in input
pixels, objectness, class scores). As in YOLOX, each anchor votes for its best class only, with
confidence ``obj * cls``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

from detector.core.boxes import cxcywh_to_xyxy
from detector.core.defaults import EVAL_CONF, EVAL_IOU, MAX_DET


def postprocess(
    pred: Tensor,
    conf_thres: float = EVAL_CONF,
    iou_thres: float = EVAL_IOU,
    class_agnostic: bool = False,
    max_det: int = MAX_DET,
) -> list[Tensor]:
    """Per image: keep anchors with ``obj * max(cls) >= conf_thres``, run NMS (per class unless
    ``class_agnostic``) at ``iou_thres``, keep the ``max_det`` best.

    The default thresholds are the evaluation ones (``EVAL_CONF``, ``EVAL_IOU`` of
    :mod:`detector.core.defaults`, as YOLOX's mAP runs); pass ``PREDICT_CONF`` and
    ``PREDICT_IOU`` when showing detections.

    Args:
        pred: ``Tensor[B, N, 5 + C]`` decoded predictions.

    Returns:
        ``B`` tensors ``[K, 6]``: ``x1, y1, x2, y2`` (input pixels), score, class index (as
        float), sorted by descending score; ``K = 0`` for an image with nothing above threshold.
    """
    if pred.ndim != 3 or pred.shape[-1] < 6:
        raise ValueError(f"postprocess expects [B, N, 5 + C] predictions, got {tuple(pred.shape)}")
    boxes = cxcywh_to_xyxy(pred[..., :4])  # [B, N, 4]
    cls_score, cls_index = pred[..., 5:].max(dim=-1)  # [B, N]
    scores = pred[..., 4] * cls_score  # [B, N]
    out = []
    for b in range(pred.shape[0]):
        keep = scores[b] >= conf_thres
        image_boxes, image_scores = boxes[b][keep], scores[b][keep]
        image_classes = cls_index[b][keep]
        if class_agnostic:
            kept = nms(image_boxes, image_scores, iou_thres)
        else:
            kept = batched_nms(image_boxes, image_scores, image_classes, iou_thres)
        kept = kept[:max_det]
        out.append(
            torch.cat(
                (
                    image_boxes[kept],
                    image_scores[kept, None],
                    image_classes[kept, None].to(image_boxes.dtype),
                ),
                dim=1,
            )
        )
    return out


def detections_to_original(
    detections: Tensor, ratio: float, original_hw: tuple[int, int]
) -> Tensor:
    """Map ``[K, 6]`` detections from letterboxed input pixels to the original image: boxes
    divided by ``ratio`` and clipped to its ``(height, width)``; score and class kept.

    The torch twin of :func:`detector.core.preprocess.boxes_to_original`. Returns a new tensor.
    """
    out = detections.clone()
    out[:, :4] = out[:, :4] / ratio
    out[:, [0, 2]] = out[:, [0, 2]].clamp(0, original_hw[1])
    out[:, [1, 3]] = out[:, [1, 3]].clamp(0, original_hw[0])
    return out
