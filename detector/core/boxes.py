"""Box formats, named once.

Inside the project every box is ``xyxy`` in pixels (``x1, y1, x2, y2``). Other formats appear only
at the edges (``cxcywh`` in the head and the YOLO txt format, ``xywh`` in COCO JSON) and are
converted here. Every function works on ``numpy.ndarray`` and ``torch.Tensor`` alike (``[..., 4]``
in, same type out) and this module imports no torch, so the torch-free serving runtime can use it.
"""

from __future__ import annotations

import sys
from typing import Any, TypeVar

import numpy as np

ArrayT = TypeVar("ArrayT")


def _stack(parts: list[Any], like: Any) -> Any:
    """Stack ``parts`` on a new last axis with the library that ``like`` comes from."""
    if isinstance(like, np.ndarray):
        return np.stack(parts, axis=-1)
    torch = sys.modules["torch"]  # ``like`` is a tensor, so torch is loaded already
    return torch.stack(parts, dim=-1)


def cxcywh_to_xyxy(boxes: ArrayT) -> ArrayT:
    """``[..., 4]`` centre-x, centre-y, width, height -> ``[..., 4]`` x1, y1, x2, y2."""
    cx, cy, w, h = (boxes[..., i] for i in range(4))
    return _stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], boxes)


def xyxy_to_cxcywh(boxes: ArrayT) -> ArrayT:
    """``[..., 4]`` x1, y1, x2, y2 -> ``[..., 4]`` centre-x, centre-y, width, height."""
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    return _stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], boxes)


def xywh_to_xyxy(boxes: ArrayT) -> ArrayT:
    """``[..., 4]`` COCO x, y (top-left), width, height -> ``[..., 4]`` x1, y1, x2, y2."""
    x, y, w, h = (boxes[..., i] for i in range(4))
    return _stack([x, y, x + w, y + h], boxes)


def xyxy_to_xywh(boxes: ArrayT) -> ArrayT:
    """``[..., 4]`` x1, y1, x2, y2 -> ``[..., 4]`` COCO x, y (top-left), width, height."""
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    return _stack([x1, y1, x2 - x1, y2 - y1], boxes)


def box_area(boxes: ArrayT) -> ArrayT:
    """``[..., 4]`` xyxy -> ``[...]`` area (zero for inverted boxes)."""
    w = (boxes[..., 2] - boxes[..., 0]).clip(0)
    h = (boxes[..., 3] - boxes[..., 1]).clip(0)
    return w * h


def clip_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Clip ``[N, 4]`` xyxy boxes to an image of ``width`` x ``height``; returns a new array."""
    out = boxes.copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def box_iou_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``[N, 4]`` and ``[M, 4]`` xyxy boxes -> ``[N, M]`` (numpy twin of
    ``torchvision.ops.box_iou``, for the torch-free code)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clip(0).prod(-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / np.maximum(union, 1e-12)
