"""SimOTA label assignment (YOLOX), vectorised over the batch.

Which anchors learn which ground-truth box. Per image, as YOLOX 0.3.0 defines it:

1. Centre prior. An anchor's centre is ``(cell + 0.5) * stride``. It is a *candidate* when it lies
   inside any gt box or within ``center_radius`` strides of any gt centre (the union over both
   regions and all gts). Anchors in both the box and the centre region of a gt are preferred.
2. Cost of pairing gt ``m`` with candidate ``n``: the class BCE of
   ``sqrt(sigmoid(cls) * sigmoid(obj))`` against the one-hot class of ``m``, plus
   ``3 * -log(IoU + 1e-8)``, plus ``1e5`` when ``n`` is not in both the box and the centre region
   of ``m``.
3. Dynamic k. Each gt takes ``k = max(1, int(sum of its top-10 candidate IoUs))`` candidates of
   lowest cost.
4. An anchor taken by several gts goes to the gt of lowest cost for it (over all gts).

:func:`simota_assign` does this for a whole padded batch with tensor operations (no loop over
images or boxes; ``tests/assign/simota_reference.py`` holds the plain per-image version that
checks it). It runs under ``torch.no_grad()`` in float32, never changes its inputs, never moves
tensors between devices, and handles images without boxes (every anchor background).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from detector.core.boxes import box_area, xyxy_to_cxcywh

__all__ = ["Assignment", "simota_assign"]

COST_IOU_WEIGHT = 3.0
"""Weight of ``-log(IoU + 1e-8)`` in the matching cost."""

OUTSIDE_PENALTY = 1e5
"""Cost added for an anchor that is not in both the box and the centre region of a gt."""

IOU_EPS = 1e-8
"""Added to the IoU inside the log of the matching cost."""


@dataclass(frozen=True)
class Assignment:
    """The result of SimOTA for a batch of ``B`` images with ``N`` anchors each.

    Attributes:
        fg_mask: ``Bool[B, N]``, True for foreground (assigned) anchors.
        gt_index: ``Long[B, N]``, index of the assigned gt in that image's ``M`` (padded) gts,
            ``-1`` for background.
        iou: ``Float[B, N]``, IoU of each foreground anchor's predicted box with its gt
            (0 for background); the soft class target of YOLOX.
        num_fg: number of foreground anchors in the whole batch.
    """

    fg_mask: Tensor
    gt_index: Tensor
    iou: Tensor
    num_fg: int


def _check_inputs(
    pred_boxes: Tensor,
    cls_logits: Tensor,
    obj_logits: Tensor,
    anchor_centers: Tensor,
    anchor_strides: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
) -> None:
    """Raise ``ValueError`` naming the argument whose shape does not fit."""
    if pred_boxes.ndim != 3 or pred_boxes.shape[-1] != 4:
        raise ValueError(f"pred_boxes must be [B, N, 4], got {tuple(pred_boxes.shape)}")
    batch, num_anchors = pred_boxes.shape[:2]
    expected = {
        "cls_logits": (cls_logits, (batch, num_anchors, cls_logits.shape[-1])),
        "obj_logits": (obj_logits, (batch, num_anchors)),
        "anchor_centers": (anchor_centers, (num_anchors, 2)),
        "anchor_strides": (anchor_strides, (num_anchors,)),
        "gt_boxes": (gt_boxes, (batch, gt_boxes.shape[1] if gt_boxes.ndim == 3 else -1, 4)),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
    for name, tensor in (("gt_labels", gt_labels), ("gt_mask", gt_mask)):
        if tuple(tensor.shape) != tuple(gt_boxes.shape[:2]):
            raise ValueError(
                f"{name} must have shape {tuple(gt_boxes.shape[:2])} (that of gt_boxes[..., 0]), "
                f"got {tuple(tensor.shape)}"
            )
    if gt_mask.dtype != torch.bool:
        raise ValueError(f"gt_mask must be a bool tensor, got {gt_mask.dtype}")


def _pairwise_iou(gt: Tensor, pred: Tensor) -> Tensor:
    """IoU of every gt with every prediction, image by image.

    Same arithmetic as ``torchvision.ops.box_iou`` with a batch dimension.

    Args:
        gt: ``[B, M, 4]`` xyxy.
        pred: ``[B, N, 4]`` xyxy.

    Returns:
        ``[B, M, N]``.
    """
    area_gt = box_area(gt)  # [B, M]
    area_pred = box_area(pred)  # [B, N]
    lt = torch.max(gt[:, :, None, :2], pred[:, None, :, :2])  # [B, M, N, 2]
    rb = torch.min(gt[:, :, None, 2:], pred[:, None, :, 2:])  # [B, M, N, 2]
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]  # [B, M, N]
    union = area_gt[:, :, None] + area_pred[:, None, :] - inter
    return inter / union


def _center_prior(
    anchor_centers: Tensor, anchor_strides: Tensor, gt_boxes: Tensor, center_radius: float
) -> tuple[Tensor, Tensor]:
    """Which anchor centres lie inside each gt box and inside each gt's centre region.

    Args:
        anchor_centers: ``[N, 2]`` anchor centres x, y in pixels.
        anchor_strides: ``[N]``.
        gt_boxes: ``[..., M, 4]`` xyxy.

    Returns:
        ``in_box``, ``in_center``: ``Bool[..., M, N]`` (strict inequalities, as YOLOX).
    """
    ax, ay = anchor_centers[:, 0], anchor_centers[:, 1]  # [N]
    x1, y1, x2, y2 = (gt_boxes[..., i, None] for i in range(4))  # [..., M, 1]
    in_box = (ax > x1) & (ax < x2) & (ay > y1) & (ay < y2)
    centre = xyxy_to_cxcywh(gt_boxes)
    cx, cy = centre[..., 0, None], centre[..., 1, None]  # [..., M, 1]
    radius = center_radius * anchor_strides  # [N]
    in_center = (ax > cx - radius) & (ax < cx + radius) & (ay > cy - radius) & (ay < cy + radius)
    return in_box, in_center


def _class_cost(cls_logits: Tensor, obj_logits: Tensor, gt_labels: Tensor) -> Tensor:
    """Class part of the cost: BCE of ``sqrt(sigmoid(cls) * sigmoid(obj))`` against one-hot.

    Uses ``BCE(p, onehot(y)).sum(classes) = sum_c -log(1 - p_c) + log(1 - p_y) - log(p_y)``, so the
    work is one in-place pass over ``[B, N, C]`` plus ``[B, N, M]``, not ``[B, M, N, C]``. Logs are
    clamped at -100, as ``F.binary_cross_entropy`` does.

    Args:
        cls_logits: ``[B, N, C]`` float32.
        obj_logits: ``[B, N]`` float32.
        gt_labels: ``[B, M]`` class indices, already valid (padding replaced).

    Returns:
        ``[B, M, N]``.
    """
    obj_prob = obj_logits.sigmoid()[..., None]  # [B, N, 1]
    # the sum over all classes, in place on one [B, N, C] buffer: -sum_c log(1 - p_c)
    log_neg = cls_logits.sigmoid().mul_(obj_prob).sqrt_().neg_().log1p_().clamp_(min=-100.0)
    all_negative = -log_neg.sum(dim=-1)  # [B, N]
    # the gt class terms, on [B, N, M] only
    index = gt_labels[:, None, :].expand(-1, cls_logits.shape[1], -1)  # [B, N, M]
    score = (cls_logits.gather(2, index).sigmoid() * obj_prob).sqrt()  # p_y, [B, N, M]
    swap = torch.log1p(-score).clamp(min=-100.0) - score.log().clamp(min=-100.0)
    return all_negative[:, None, :] + swap.transpose(1, 2)


def _empty_assignment(batch: int, num_anchors: int, device: torch.device) -> Assignment:
    """Every anchor background."""
    return Assignment(
        fg_mask=torch.zeros(batch, num_anchors, dtype=torch.bool, device=device),
        gt_index=torch.full((batch, num_anchors), -1, dtype=torch.long, device=device),
        iou=torch.zeros(batch, num_anchors, dtype=torch.float32, device=device),
        num_fg=0,
    )


@torch.no_grad()
def simota_assign(
    pred_boxes: Tensor,
    cls_logits: Tensor,
    obj_logits: Tensor,
    anchor_centers: Tensor,
    anchor_strides: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    center_radius: float = 2.5,
    topk: int = 10,
) -> Assignment:
    """SimOTA for a padded batch, with no Python loop over images or boxes.

    Args:
        pred_boxes: ``[B, N, 4]`` decoded predicted boxes, xyxy pixels.
        cls_logits: ``[B, N, C]`` class logits.
        obj_logits: ``[B, N]`` objectness logits.
        anchor_centers: ``[N, 2]`` anchor centres ``(cell + 0.5) * stride``, pixels.
        anchor_strides: ``[N]`` stride of each anchor's level.
        gt_boxes: ``[B, M, 4]`` ground-truth boxes, xyxy pixels (padding rows are ignored).
        gt_labels: ``[B, M]`` class indices (padding rows are ignored).
        gt_mask: ``Bool[B, M]``, True for real boxes.
        center_radius: half-size of the centre region, in strides.
        topk: how many of the best IoUs make up a gt's dynamic k.

    Returns:
        The :class:`Assignment`; ``gt_index`` counts in the padded ``M``.
    """
    _check_inputs(
        pred_boxes,
        cls_logits,
        obj_logits,
        anchor_centers,
        anchor_strides,
        gt_boxes,
        gt_labels,
        gt_mask,
    )
    batch, num_anchors = pred_boxes.shape[:2]
    device = pred_boxes.device
    if gt_boxes.shape[1] == 0 or not bool(gt_mask.any()):
        return _empty_assignment(batch, num_anchors, device)
    gt_boxes = gt_boxes.float()
    valid_gt = gt_mask[:, :, None]  # [B, M, 1]
    num_gt = gt_boxes.shape[1]

    # 1. centre prior: candidates are the union over gts of (in box | in centre region)
    in_box, in_center = _center_prior(
        anchor_centers.float(), anchor_strides.float(), gt_boxes, center_radius
    )  # [B, M, N]
    candidate = ((in_box | in_center) & valid_gt).any(dim=1)  # [B, N]

    # the rest works on the K candidates of each image only (in anchor order, padded to the
    # largest count): usually a small share of the N anchors
    num_candidates = candidate.sum(dim=1)  # [B]
    k_cand = int(num_candidates.max())
    if k_cand == 0:
        return _empty_assignment(batch, num_anchors, device)
    order = torch.argsort((~candidate).to(torch.uint8), dim=1, stable=True)[:, :k_cand]  # [B, K]
    slot_valid = torch.arange(k_cand, device=device) < num_candidates[:, None]  # [B, K]
    allowed = slot_valid[:, None, :] & valid_gt  # [B, M, K] pairs that enter the matching
    order_gt = order[:, None, :].expand(-1, num_gt, -1)  # [B, M, K]
    both = (in_box & in_center).gather(2, order_gt)  # [B, M, K]
    boxes_k = pred_boxes.float().gather(1, order[..., None].expand(-1, -1, 4))  # [B, K, 4]
    cls_k = cls_logits.float().gather(1, order[..., None].expand(-1, -1, cls_logits.shape[-1]))
    obj_k = obj_logits.float().gather(1, order)  # [B, K]

    # 2. cost of each (gt, candidate) pair; pairs outside the matching cost +inf
    ious = _pairwise_iou(gt_boxes, boxes_k)  # [B, M, K]
    ious = torch.where(allowed, ious, torch.zeros_like(ious))
    labels = torch.where(gt_mask, gt_labels, torch.zeros_like(gt_labels)).long()
    cost = (
        _class_cost(cls_k, obj_k, labels)
        + COST_IOU_WEIGHT * -torch.log(ious + IOU_EPS)
        + OUTSIDE_PENALTY * (~both).float()
    )
    cost = torch.where(allowed, cost, torch.full_like(cost, float("inf")))

    # 3. dynamic k: each gt takes its k cheapest candidates (k <= topk, since IoU <= 1)
    k_max = min(topk, k_cand)
    dynamic_k = ious.topk(k_max, dim=-1).values.sum(dim=-1).int().clamp(min=1)  # [B, M]
    pick_cost, pick_index = cost.topk(k_max, dim=-1, largest=False)  # [B, M, k_max]
    rank = torch.arange(k_max, device=device)
    picked = (rank < dynamic_k[..., None]) & torch.isfinite(pick_cost)  # [B, M, k_max]
    matching = torch.zeros_like(cost, dtype=torch.bool).scatter_(-1, pick_index, picked)

    # 4. an anchor picked by several gts goes to the gt of lowest cost for it
    times_picked = matching.sum(dim=1)  # [B, K]
    fg_k = times_picked > 0
    cheapest_gt = cost.min(dim=1).indices  # [B, K]
    only_gt = matching.to(torch.uint8).max(dim=1).indices  # [B, K]
    gt_index_k = torch.where(times_picked > 1, cheapest_gt, only_gt)
    iou_k = ious.gather(1, gt_index_k[:, None, :]).squeeze(1)  # [B, K]

    # back from candidate slots to anchors (order is a permutation, so no slot collides)
    fg_mask = torch.zeros(batch, num_anchors, dtype=torch.bool, device=device)
    fg_mask.scatter_(1, order, fg_k)
    gt_index = torch.full((batch, num_anchors), -1, dtype=torch.long, device=device)
    gt_index.scatter_(1, order, torch.where(fg_k, gt_index_k, torch.full_like(gt_index_k, -1)))
    iou = torch.zeros(batch, num_anchors, dtype=torch.float32, device=device)
    iou.scatter_(1, order, torch.where(fg_k, iou_k, torch.zeros_like(iou_k)))
    return Assignment(fg_mask=fg_mask, gt_index=gt_index, iou=iou, num_fg=int(fg_k.sum()))
