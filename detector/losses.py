"""The YOLOX training loss: SimOTA assignment, then IoU, objectness, class and L1 terms.

Every term is summed over anchors and divided by the number of foreground anchors of the batch
(at least 1), as the official YOLOX does:

- ``iou``: ``iou_weight * (1 - IoU^2)`` (``iou_type="iou"``) or ``iou_weight * (1 - GIoU)``
  (``"giou"``) of each foreground anchor's decoded box with its gt;
- ``obj``: objectness BCE over all anchors, target 1 on foreground, 0 elsewhere;
- ``cls``: class BCE on foreground anchors against ``one_hot(class) * IoU`` (IoU-aware targets);
- ``l1``: L1 between the raw box offsets and the encoded gt (``cx / stride - cell``,
  ``log(w / stride + 1e-8)``), only with ``use_l1=True`` (the final no-augmentation phase);
  otherwise a zero that adds nothing.

``total`` is the plain sum of the four (the IoU weight is already inside ``iou``). The loss runs in
float32 whatever the model's dtype, so it is safe under autocast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from detector.assign import Assignment, simota_assign
from detector.core.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh
from detector.models.decode import decode_boxes, flatten_levels, make_grid

__all__ = ["YOLOXLoss", "paired_iou_loss"]

IOU_TYPES = ("iou", "giou")
L1_EPS = 1e-8


def paired_iou_loss(pred: Tensor, target: Tensor, iou_type: str = "iou") -> Tensor:
    """Per-pair IoU loss of YOLOX.

    Args:
        pred: ``[F, 4]`` xyxy.
        target: ``[F, 4]`` xyxy.
        iou_type: ``"iou"`` -> ``1 - IoU^2``; ``"giou"`` -> ``1 - GIoU``.

    Returns:
        ``[F]``.
    """
    if iou_type == "giou":
        return torchvision.ops.generalized_box_iou_loss(pred, target, reduction="none")
    if iou_type != "iou":
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_pred = (pred[:, 2:] - pred[:, :2]).prod(dim=1)
    area_target = (target[:, 2:] - target[:, :2]).prod(dim=1)
    iou = inter / (area_pred + area_target - inter + 1e-16)
    return 1 - iou**2


class YOLOXLoss(nn.Module):
    """SimOTA + the YOLOX loss terms, from the head's raw maps and padded targets.

    Args:
        num_classes: ``C``.
        strides: stride of each level, in the order of the maps.
        iou_type: ``"iou"`` or ``"giou"``.
        iou_weight: weight of the IoU term (5 in YOLOX).
        center_radius: SimOTA's centre region, in strides.
        topk: SimOTA's number of IoUs summed into the dynamic k.
    """

    def __init__(
        self,
        num_classes: int,
        strides: Sequence[int] = (8, 16, 32),
        iou_type: str = "iou",
        iou_weight: float = 5.0,
        center_radius: float = 2.5,
        topk: int = 10,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if iou_type not in IOU_TYPES:
            raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
        self.num_classes = num_classes
        self.strides = tuple(int(s) for s in strides)
        self.iou_type = iou_type
        self.iou_weight = float(iou_weight)
        self.center_radius = float(center_radius)
        self.topk = int(topk)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, strides={self.strides}, iou_type={self.iou_type!r}, "
            f"iou_weight={self.iou_weight}, center_radius={self.center_radius}, topk={self.topk}"
        )

    def _check(self, maps: Sequence[Tensor], boxes: Tensor, labels: Tensor) -> None:
        """Raise ``ValueError`` naming the argument that does not fit."""
        if len(maps) != len(self.strides):
            raise ValueError(f"maps: expected {len(self.strides)} levels, got {len(maps)}")
        batch = maps[0].shape[0]
        for i, m in enumerate(maps):
            if m.ndim != 4 or m.shape[0] != batch or m.shape[1] != 5 + self.num_classes:
                raise ValueError(
                    f"maps[{i}] must be [B, 5 + {self.num_classes}, H, W] with B={batch}, "
                    f"got {tuple(m.shape)}"
                )
        if boxes.ndim != 3 or boxes.shape[0] != batch or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be [B={batch}, M, 4], got {tuple(boxes.shape)}")
        if tuple(labels.shape) != tuple(boxes.shape[:2]):
            raise ValueError(
                f"labels must be [B, M] = {tuple(boxes.shape[:2])}, got {tuple(labels.shape)}"
            )
        if labels.numel() and int(labels.max()) >= self.num_classes:
            raise ValueError(
                f"labels: class {int(labels.max())} out of range for {self.num_classes} classes"
            )

    def forward(
        self, maps: Sequence[Tensor], boxes: Tensor, labels: Tensor, use_l1: bool = False
    ) -> dict[str, Tensor]:
        """Loss of one batch.

        Args:
            maps: raw head outputs per level, ``[B, 5 + C, H_i, W_i]``, channels
                ``reg (4) | obj (1) | cls (C)`` (logits), levels in stride order.
            boxes: ``[B, M, 4]`` gt boxes, xyxy input pixels (padding rows: any value).
            labels: ``[B, M]`` int64 classes, ``-1`` for padding.
            use_l1: add the L1 term on raw offsets (final no-augmentation phase).

        Returns:
            ``{"total", "iou", "obj", "cls", "l1", "num_fg"}``, scalar tensors; ``num_fg`` (the
            number of foreground anchors, as a float) is detached.
        """
        self._check(maps, boxes, labels)
        raw = flatten_levels(maps)  # [B, N, 5 + C]
        shapes = [tuple(m.shape[-2:]) for m in maps]
        grid, stride = make_grid(shapes, self.strides, torch.float32, raw.device)  # [N,2], [N,1]
        boxes = boxes.float()

        with torch.no_grad():
            detached = raw.detach().float()
            assignment: Assignment = simota_assign(
                cxcywh_to_xyxy(decode_boxes(detached[..., :4], grid, stride)),  # [B, N, 4]
                detached[..., 5:],
                detached[..., 4],
                (grid + 0.5) * stride,
                stride[:, 0],
                boxes,
                labels,
                labels >= 0,
                center_radius=self.center_radius,
                topk=self.topk,
            )
        fg = assignment.fg_mask  # [B, N]
        norm = float(max(assignment.num_fg, 1))

        # the foreground anchors' outputs and targets, [F, ...] (gathering them first keeps the
        # backward pass to one scatter into the full maps)
        batch_index, anchor_index = fg.nonzero(as_tuple=True)
        raw_fg = raw[batch_index, anchor_index].float()  # [F, 5 + C]
        cell, cell_stride = grid[anchor_index], stride[anchor_index]  # [F, 2], [F, 1]
        pred_xyxy = cxcywh_to_xyxy(decode_boxes(raw_fg[:, :4], cell, cell_stride))  # [F, 4]
        gt_index = assignment.gt_index[batch_index, anchor_index]
        target_xyxy = boxes[batch_index, gt_index]  # [F, 4]
        target_cls = F.one_hot(labels[batch_index, gt_index].long(), self.num_classes)
        target_cls = target_cls.float() * assignment.iou[batch_index, anchor_index, None]

        obj = raw[..., 4].float()  # [B, N]
        loss_iou = paired_iou_loss(pred_xyxy, target_xyxy, self.iou_type).sum() / norm
        loss_obj = F.binary_cross_entropy_with_logits(obj, fg.float(), reduction="sum") / norm
        loss_cls = (
            F.binary_cross_entropy_with_logits(raw_fg[:, 5:], target_cls, reduction="sum") / norm
        )
        if use_l1:
            target_l1 = self._l1_target(target_xyxy, cell, cell_stride)
            loss_l1 = F.l1_loss(raw_fg[:, :4], target_l1, reduction="sum") / norm
        else:
            loss_l1 = obj.new_zeros(())
        loss_iou = self.iou_weight * loss_iou
        return {
            "total": loss_iou + loss_obj + loss_cls + loss_l1,
            "iou": loss_iou,
            "obj": loss_obj,
            "cls": loss_cls,
            "l1": loss_l1,
            "num_fg": obj.new_tensor(float(assignment.num_fg)),
        }

    @staticmethod
    def _l1_target(target_xyxy: Tensor, cell: Tensor, stride: Tensor) -> Tensor:
        """gt boxes ``[F, 4]`` xyxy -> raw offsets ``[F, 4]`` the head should predict.

        ``cell``: ``[F, 2]`` anchor column/row; ``stride``: ``[F, 1]``.
        """
        target = xyxy_to_cxcywh(target_xyxy)
        centre = target[:, :2] / stride - cell
        size = torch.log(target[:, 2:] / stride + L1_EPS)
        return torch.cat((centre, size), dim=1)
