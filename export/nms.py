"""Class-aware NMS inside the exported graph, with the standard ONNX ``NonMaxSuppression`` op.

From the decoded ``[B, N, 5 + C]`` output to ``num_dets [B, 1]`` (int32), ``boxes [B, K, 4]``
(xyxy, input pixels), ``scores [B, K]`` and ``classes [B, K]`` (int32), padded with zeros to
``K`` = max detections, sorted by descending score: the same detections as
``detector.ops.postprocess`` (each anchor votes for its best class with ``obj * max(cls)``,
class-aware NMS, the ``K`` best).

How the graph does it: the per-class score tensor ``[B, C, N]`` that ``NonMaxSuppression`` takes
holds each anchor's score at its best class only (zero elsewhere, below any threshold > 0), so
an anchor is selected at most once; ``NonMaxSuppression`` (``max_output_boxes_per_class`` = K:
greedy NMS keeps a class's best survivors first, so K per class loses nothing of the overall K
best) returns ``[M, 3]`` (batch, class, anchor) rows; their scores are scattered back into a
``[B, N]`` map (``ScatterND``) whose ``TopK`` (K) gives the sorted, padded result. Everything is
per batch item, so a dynamic batch works.

TensorRT (the parser maps ``NonMaxSuppression`` to its ``INMSLayer``; no plugin): facts that
matter here, from the TensorRT 10.x operator and API docs (``INMSLayer``, onnx-tensorrt
``docs/operators.md``):
- boxes and scores FP32 or FP16; a box is selected when its score *exceeds* the score
  threshold and its IoU with selected boxes is *at most* the IoU threshold, per class, as in
  ONNX Runtime and torchvision (``detector.ops.postprocess`` keeps ``score >= conf``: only an
  exact tie with the threshold differs);
- ``max_output_boxes_per_class``, ``iou_threshold`` and ``score_threshold`` must be build-time
  constants (they are initializers here, so they are export options recorded in the metadata);
- its selected indices are INT32 (the parser casts to the ONNX INT64), and it considers at most
  the TopK box limit of boxes per batch item after the score filter: 5000 (2000 on SM 5.3/6.2,
  i.e. Jetson Nano/TX2). At 640 px there are 8400 anchors, so with a very low score threshold
  (mAP-style 0.001) TensorRT may drop candidates that ONNX Runtime keeps; serving thresholds
  (0.25) leave far fewer;
- ``TopK``'s K must be a constant below 3840 and ``sorted`` must be 1: K = min(max
  detections, anchors) is checked against that at export;
- the order of equal-score boxes is unspecified (as for ``torch.topk``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from detector.core.boxes import cxcywh_to_xyxy

TENSORRT_TOPK_LIMIT = 3840  # TopK's K must be below this in TensorRT


class NonMaxSuppressionOp(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (corner boxes): eager PyTorch code for tracing and tests, the
    ONNX op when exported."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: object,
        boxes: Tensor,
        scores: Tensor,
        max_per_class: int,
        iou_threshold: float,
        score_threshold: float,
    ) -> Tensor:
        """``boxes [B, N, 4]`` xyxy, ``scores [B, C, N]`` -> ``[M, 3]`` int64 rows (batch,
        class, box)."""
        rows = []
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                keep = torch.nonzero(scores[b, c] > score_threshold).flatten()
                kept = batched_nms(
                    boxes[b, keep], scores[b, c, keep], torch.zeros_like(keep), iou_threshold
                )[:max_per_class]
                index = keep[kept]
                rows.append(
                    torch.stack((torch.full_like(index, b), torch.full_like(index, c), index), 1)
                )
        if not rows:
            return torch.zeros(0, 3, dtype=torch.int64)
        return torch.cat(rows)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou_threshold, score_threshold):  # noqa: ANN001
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32)),
            center_point_box_i=0,
        )


class InGraphNms(nn.Module):
    """``[B, N, 5 + C]`` decoded output -> ``(num_dets, boxes, scores, classes)``.

    Args:
        score_threshold: keep ``obj * max(cls) > score_threshold`` (must be > 0).
        iou_threshold: suppress same-class boxes with IoU above it.
        max_detections: ``K``, at most the number of anchors and below TensorRT's TopK limit.
    """

    def __init__(self, score_threshold: float, iou_threshold: float, max_detections: int) -> None:
        super().__init__()
        if not 0 < max_detections < TENSORRT_TOPK_LIMIT:
            raise ValueError(
                f"max detections must be in 1..{TENSORRT_TOPK_LIMIT - 1} (TensorRT's TopK "
                f"limit), got {max_detections}"
            )
        if score_threshold <= 0:
            raise ValueError(f"the NMS score threshold must be > 0, got {score_threshold}")
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.max_detections = int(max_detections)

    def forward(self, pred: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        boxes = cxcywh_to_xyxy(pred[..., :4])  # [B, N, 4]
        best_score, best_class = pred[..., 5:].max(dim=-1)  # [B, N]
        score = pred[..., 4] * best_score  # [B, N]
        num_classes = pred.shape[-1] - 5
        one_hot = best_class.unsqueeze(1) == torch.arange(num_classes).view(1, -1, 1)
        per_class = score.unsqueeze(1) * one_hot.to(score.dtype)  # [B, C, N]
        selected = NonMaxSuppressionOp.apply(
            boxes, per_class, self.max_detections, self.iou_threshold, self.score_threshold
        )
        batch_index, box_index = selected[:, 0], selected[:, 2]
        kept = torch.zeros_like(score).index_put(
            (batch_index, box_index), score[batch_index, box_index]
        )
        top_scores, top_index = kept.topk(self.max_detections, dim=1)  # [B, K], sorted
        valid = top_scores > 0
        num_dets = valid.sum(dim=1, keepdim=True).to(torch.int32)
        top_boxes = boxes.gather(1, top_index.unsqueeze(-1).expand(-1, -1, 4))
        top_boxes = top_boxes * valid.unsqueeze(-1).to(top_boxes.dtype)
        classes = best_class.gather(1, top_index) * valid.to(best_class.dtype)
        return num_dets, top_boxes, top_scores, classes.to(torch.int32)
