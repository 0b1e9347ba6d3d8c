"""Turning the head's raw maps into boxes: grids, flattening and decoding (plain functions).

The head returns one raw map per level, ``Tensor[B, 5 + C, H_i, W_i]`` with channels
``reg (4) | obj (1) | cls (C)`` as logits, levels in stride order (8, 16, 32). Flattening walks
each level row-major (y, then x), levels one after another, as the official YOLOX does, so anchor
``n`` is the same cell in training, evaluation and the exported graph. Everything here is traceable
by ``torch.onnx.export``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def flatten_levels(maps: Sequence[Tensor]) -> Tensor:
    """``[B, K, H_i, W_i]`` per level -> ``[B, N, K]`` with ``N = sum(H_i * W_i)``."""
    return torch.cat([m.flatten(start_dim=2) for m in maps], dim=2).permute(0, 2, 1)


def make_grid(
    shapes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Anchor cells of every level.

    Args:
        shapes: ``(H_i, W_i)`` of each level's map.
        strides: the stride of each level, in input pixels.

    Returns:
        ``grid``: ``Tensor[N, 2]`` cell column and row (x, y) of each anchor;
        ``stride``: ``Tensor[N, 1]`` its level's stride.
    """
    grids, level_strides = [], []
    for (height, width), stride in zip(shapes, strides):
        ys, xs = torch.meshgrid(
            torch.arange(height, device=device, dtype=dtype),
            torch.arange(width, device=device, dtype=dtype),
            indexing="ij",
        )
        grids.append(torch.stack((xs, ys), dim=2).reshape(-1, 2))
        level_strides.append(torch.full((height * width, 1), stride, device=device, dtype=dtype))
    return torch.cat(grids), torch.cat(level_strides)


def decode_boxes(reg: Tensor, grid: Tensor, stride: Tensor) -> Tensor:
    """Raw box offsets ``[B, N, 4]`` -> ``[B, N, 4]`` ``cx, cy, w, h`` in input pixels.

    ``cxcy = (offset + cell) * stride``, ``wh = exp(raw) * stride``.
    """
    centres = (reg[..., :2] + grid) * stride
    sizes = torch.exp(reg[..., 2:4]) * stride
    return torch.cat((centres, sizes), dim=-1)


def decode_outputs(maps: Sequence[Tensor], strides: Sequence[int]) -> Tensor:
    """Raw per-level maps -> ``Tensor[B, N, 5 + C]``: ``cx, cy, w, h`` in input pixels, then
    objectness and class scores after sigmoid (the layout of the official YOLOX)."""
    raw = flatten_levels(maps)
    grid, stride = make_grid([m.shape[-2:] for m in maps], strides, raw.dtype, raw.device)
    boxes = decode_boxes(raw[..., :4], grid, stride)
    return torch.cat((boxes, raw[..., 4:].sigmoid()), dim=-1)
