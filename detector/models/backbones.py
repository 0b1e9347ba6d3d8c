"""Backbones: CSPDarknet (YOLOX nano ... x) and Darknet-53 (YOLOX-Darknet53, YOLOv3 baseline).

Both return the three deepest stages ``(dark3, dark4, dark5)`` at strides 8, 16 and 32. Stages are
written out one by one; the shape comments are for ``width = 1`` and a 640 x 640 input.
"""

from __future__ import annotations

from torch import Tensor, nn

from detector.models.blocks import (
    ConvBNAct,
    CSPLayer,
    Focus,
    ResLayer,
    SPPBottleneck,
    conv_block,
)


class CSPDarknet(nn.Module):
    """CSPDarknet with depth/width multipliers.

    Args:
        depth: depth multiplier; a stage with ``n`` bottlenecks at depth 1 gets
            ``max(round(3 * depth), 1) * n / 3``.
        width: width multiplier; the stem has ``int(64 * width)`` channels, doubled per stage.
        depthwise: depthwise-separable 3x3 convolutions (YOLOX-Nano).
        act: activation of every conv block.

    ``[B, 3, H, W]`` -> ``(dark3 [B, 4c, H/8, W/8], dark4 [B, 8c, H/16, W/16],
    dark5 [B, 16c, H/32, W/32])`` with ``c = int(64 * width)``.
    """

    def __init__(
        self, depth: float, width: float, depthwise: bool = False, act: str = "silu"
    ) -> None:
        super().__init__()
        conv = conv_block(depthwise)
        c = int(width * 64)
        n = max(round(depth * 3), 1)
        self.out_channels = (c * 4, c * 8, c * 16)
        self.stem = Focus(3, c, ksize=3, act=act)  # 3->64, /2
        self.dark2 = nn.Sequential(
            conv(c, c * 2, 3, 2, act=act),  # 64->128, /4
            CSPLayer(c * 2, c * 2, n=n, depthwise=depthwise, act=act),
        )
        self.dark3 = nn.Sequential(
            conv(c * 2, c * 4, 3, 2, act=act),  # 128->256, /8
            CSPLayer(c * 4, c * 4, n=n * 3, depthwise=depthwise, act=act),
        )
        self.dark4 = nn.Sequential(
            conv(c * 4, c * 8, 3, 2, act=act),  # 256->512, /16
            CSPLayer(c * 8, c * 8, n=n * 3, depthwise=depthwise, act=act),
        )
        self.dark5 = nn.Sequential(
            conv(c * 8, c * 16, 3, 2, act=act),  # 512->1024, /32
            SPPBottleneck(c * 16, c * 16, act=act),
            CSPLayer(c * 16, c * 16, n=n, shortcut=False, depthwise=depthwise, act=act),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.dark2(self.stem(x))
        dark3 = self.dark3(x)
        dark4 = self.dark4(dark3)
        dark5 = self.dark5(dark4)
        return dark3, dark4, dark5


def _down_and_residuals(in_channels: int, num_blocks: int) -> list[nn.Module]:
    """A stride-2 3x3 conv doubling the width, then ``num_blocks`` residual layers."""
    out = in_channels * 2
    return [ConvBNAct(in_channels, out, 3, 2, act="lrelu")] + [
        ResLayer(out) for _ in range(num_blocks)
    ]


def _spp_block(channels: int) -> list[nn.Module]:
    """YOLOv3-SPP's head of dark5: ``2c -> c -> 2c -> SPP(c) -> 2c -> c``."""
    return [
        ConvBNAct(channels * 2, channels, 1, 1, act="lrelu"),
        ConvBNAct(channels, channels * 2, 3, 1, act="lrelu"),
        SPPBottleneck(channels * 2, channels, act="lrelu"),
        ConvBNAct(channels, channels * 2, 3, 1, act="lrelu"),
        ConvBNAct(channels * 2, channels, 1, 1, act="lrelu"),
    ]


class Darknet53(nn.Module):
    """Darknet-53 (residual stages of 1, 2, 8, 8, 4 blocks) with an SPP block on dark5.

    ``[B, 3, H, W]`` -> ``(dark3 [B, 256, H/8, W/8], dark4 [B, 512, H/16, W/16],
    dark5 [B, 512, H/32, W/32])``.
    """

    blocks = (2, 8, 8, 4)

    def __init__(self, stem_channels: int = 32) -> None:
        super().__init__()
        c = stem_channels
        self.out_channels = (c * 8, c * 16, c * 16)
        self.stem = nn.Sequential(
            ConvBNAct(3, c, 3, 1, act="lrelu"),  # 3->32
            *_down_and_residuals(c, 1),  # 32->64, /2
        )
        self.dark2 = nn.Sequential(*_down_and_residuals(c * 2, self.blocks[0]))  # 64->128, /4
        self.dark3 = nn.Sequential(*_down_and_residuals(c * 4, self.blocks[1]))  # 128->256, /8
        self.dark4 = nn.Sequential(*_down_and_residuals(c * 8, self.blocks[2]))  # 256->512, /16
        self.dark5 = nn.Sequential(
            *_down_and_residuals(c * 16, self.blocks[3]),  # 512->1024, /32
            *_spp_block(c * 16),  # 1024->512
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.dark2(self.stem(x))
        dark3 = self.dark3(x)
        dark4 = self.dark4(dark3)
        dark5 = self.dark5(dark4)
        return dark3, dark4, dark5
