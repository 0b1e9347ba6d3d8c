"""The plain per-image SimOTA that the vectorised :func:`detector.assign.simota_assign` is
checked against (tests only: training uses the vectorised version)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

from detector.assign import Assignment
from detector.assign.simota import COST_IOU_WEIGHT, IOU_EPS, OUTSIDE_PENALTY


def center_prior(
    anchor_centers: Tensor, anchor_strides: Tensor, gt_boxes: Tensor, center_radius: float
) -> tuple[Tensor, Tensor]:
    """``in_box``, ``in_center``: ``Bool[G, N]``, whether each anchor centre lies strictly inside
    each gt box ``[G, 4]`` (xyxy) and within ``center_radius`` strides of its centre."""
    ax, ay = anchor_centers[:, 0], anchor_centers[:, 1]  # [N]
    x1, y1, x2, y2 = (gt_boxes[:, i, None] for i in range(4))  # [G, 1]
    in_box = (ax > x1) & (ax < x2) & (ay > y1) & (ay < y2)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    radius = center_radius * anchor_strides  # [N]
    in_center = (ax > cx - radius) & (ax < cx + radius) & (ay > cy - radius) & (ay < cy + radius)
    return in_box, in_center


@torch.no_grad()
def simota_assign_reference(
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
    """Plain per-image SimOTA, written for reading, to check :func:`simota_assign` against.

    Same arguments and result as :func:`simota_assign` (valid inputs only: the shape checks are
    the library's). Loops over images and boxes, works on the candidate anchors only and computes
    the class cost with ``F.binary_cross_entropy``, as the official YOLOX does.
    """
    batch, num_anchors = pred_boxes.shape[:2]
    num_classes = cls_logits.shape[-1]
    fg_mask = torch.zeros(batch, num_anchors, dtype=torch.bool, device=pred_boxes.device)
    gt_index = torch.full_like(fg_mask, -1, dtype=torch.long)
    matched_iou = torch.zeros_like(fg_mask, dtype=torch.float32)
    for b in range(batch):
        real = gt_mask[b].nonzero().squeeze(1)  # positions of real boxes among the M
        if len(real) == 0:
            continue
        boxes = gt_boxes[b, real].float()  # [G, 4]
        labels = gt_labels[b, real].long()  # [G]
        in_box, in_center = center_prior(
            anchor_centers.float(), anchor_strides.float(), boxes, center_radius
        )  # [G, N]
        cand = (in_box | in_center).any(dim=0).nonzero().squeeze(1)  # [K]
        if len(cand) == 0:
            continue
        ious = torchvision.ops.box_iou(boxes, pred_boxes[b, cand].float())  # [G, K]
        score = (
            cls_logits[b, cand].float().sigmoid() * obj_logits[b, cand, None].float().sigmoid()
        ).sqrt()  # [K, C]
        onehot = F.one_hot(labels, num_classes).float()  # [G, C]
        cls_cost = F.binary_cross_entropy(
            score[None].expand(len(real), -1, -1),
            onehot[:, None].expand(-1, len(cand), -1),
            reduction="none",
        ).sum(-1)  # [G, K]
        outside = ~(in_box[:, cand] & in_center[:, cand])
        cost = cls_cost + COST_IOU_WEIGHT * -torch.log(ious + IOU_EPS) + OUTSIDE_PENALTY * outside

        matching = torch.zeros_like(cost, dtype=torch.bool)  # [G, K]
        top_ious = ious.topk(min(topk, len(cand)), dim=1).values
        for g in range(len(real)):
            k = max(1, int(top_ious[g].sum()))
            matching[g, cost[g].topk(k, largest=False).indices] = True
        for j in range(len(cand)):
            takers = matching[:, j].nonzero().squeeze(1)
            if len(takers) == 0:
                continue
            g = int(cost[:, j].argmin()) if len(takers) > 1 else int(takers[0])
            fg_mask[b, cand[j]] = True
            gt_index[b, cand[j]] = real[g]
            matched_iou[b, cand[j]] = ious[g, j]
    return Assignment(fg_mask, gt_index, matched_iou, int(fg_mask.sum()))
