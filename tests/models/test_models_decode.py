"""Decoding raw head maps into boxes, against a hand-written YOLOX decode."""

from __future__ import annotations

import torch

from detector.models.decode import decode_outputs, flatten_levels, make_grid


def reference_decode(maps: list[torch.Tensor], strides: tuple[int, ...]) -> torch.Tensor:
    """Anchor by anchor, as the official head does it: level, then row (y), then column (x)."""
    rows = []
    for level, stride in zip(maps, strides):
        batch, channels, height, width = level.shape
        for y in range(height):
            for x in range(width):
                v = level[:, :, y, x]
                box = torch.stack(
                    [
                        (v[:, 0] + x) * stride,
                        (v[:, 1] + y) * stride,
                        v[:, 2].exp() * stride,
                        v[:, 3].exp() * stride,
                    ],
                    dim=1,
                )
                rows.append(torch.cat([box, v[:, 4:].sigmoid()], dim=1))
    return torch.stack(rows, dim=1)


def test_decode_matches_reference():
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(2, 7, h, w, generator=g) for h, w in ((4, 6), (2, 3), (1, 2))]
    out = decode_outputs(maps, (8, 16, 32))
    assert out.shape == (2, 24 + 6 + 2, 7)
    torch.testing.assert_close(out, reference_decode(maps, (8, 16, 32)))


def test_zero_offsets_give_cell_corners_and_stride_sizes():
    maps = [torch.zeros(1, 6, 2, 3), torch.zeros(1, 6, 1, 2)]
    out = decode_outputs(maps, (8, 16))
    assert out[0, 4].tolist() == [8.0, 8.0, 8.0, 8.0, 0.5, 0.5]  # level 0, row 1, column 1
    assert out[0, 7].tolist() == [16.0, 0.0, 16.0, 16.0, 0.5, 0.5]  # level 1, column 1


def test_grid_and_flatten_layout():
    grid, stride = make_grid([(2, 3)], [8])
    assert grid.tolist() == [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]]
    assert stride.shape == (6, 1)
    maps = [torch.arange(12.0).reshape(1, 2, 2, 3)]
    assert flatten_levels(maps)[0, :, 0].tolist() == [0, 1, 2, 3, 4, 5]
