"""Necks: the PAFPN of YOLOX (CSPDarknet inside) and the YOLOv3 FPN (Darknet-53 inside).

A neck owns its backbone as ``self.backbone``, which gives the official key names
(``backbone.backbone.dark2...``, ``backbone.lateral_conv0...``). Both take ``[B, 3, H, W]`` and
return three maps at strides 8, 16 and 32. Shape comments: width 1, ``/s`` is the stride.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detector.models.backbones import CSPDarknet, Darknet53
from detector.models.blocks import ConvBNAct, CSPLayer, conv_block


class PAFPN(nn.Module):
    """Top-down then bottom-up path aggregation over CSPDarknet's dark3/dark4/dark5.

    Args:
        depth, width, depthwise, act: as for :class:`CSPDarknet`; the CSP layers here have
            ``round(3 * depth)`` bottlenecks without shortcut.
        in_channels: channels of dark3/dark4/dark5 at width 1.

    Returns ``(p3 [B, c0, H/8, W/8], p4 [B, c1, H/16, W/16], p5 [B, c2, H/32, W/32])`` with
    ``c_i = int(in_channels[i] * width)``.
    """

    def __init__(
        self,
        depth: float = 1.0,
        width: float = 1.0,
        in_channels: Sequence[int] = (256, 512, 1024),
        depthwise: bool = False,
        act: str = "silu",
    ) -> None:
        super().__init__()
        self.backbone = CSPDarknet(depth, width, depthwise=depthwise, act=act)
        conv = conv_block(depthwise)
        c3, c4, c5 = (int(c * width) for c in in_channels)
        n = round(3 * depth)
        self.out_channels = (c3, c4, c5)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        # top-down
        self.lateral_conv0 = ConvBNAct(c5, c4, 1, 1, act=act)
        self.C3_p4 = CSPLayer(2 * c4, c4, n, False, depthwise=depthwise, act=act)
        self.reduce_conv1 = ConvBNAct(c4, c3, 1, 1, act=act)
        self.C3_p3 = CSPLayer(2 * c3, c3, n, False, depthwise=depthwise, act=act)
        # bottom-up
        self.bu_conv2 = conv(c3, c3, 3, 2, act=act)
        self.C3_n3 = CSPLayer(2 * c3, c4, n, False, depthwise=depthwise, act=act)
        self.bu_conv1 = conv(c4, c4, 3, 2, act=act)
        self.C3_n4 = CSPLayer(2 * c4, c5, n, False, depthwise=depthwise, act=act)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dark3, dark4, dark5 = self.backbone(x)
        fpn_out0 = self.lateral_conv0(dark5)  # 1024->512/32
        f_out0 = torch.cat([self.upsample(fpn_out0), dark4], 1)  # 512->1024/16
        f_out0 = self.C3_p4(f_out0)  # 1024->512/16
        fpn_out1 = self.reduce_conv1(f_out0)  # 512->256/16
        f_out1 = torch.cat([self.upsample(fpn_out1), dark3], 1)  # 256->512/8
        pan_out2 = self.C3_p3(f_out1)  # 512->256/8
        p_out1 = torch.cat([self.bu_conv2(pan_out2), fpn_out1], 1)  # 256->512/16
        pan_out1 = self.C3_n3(p_out1)  # 512->512/16
        p_out0 = torch.cat([self.bu_conv1(pan_out1), fpn_out0], 1)  # 512->1024/32
        pan_out0 = self.C3_n4(p_out0)  # 1024->1024/32
        return pan_out2, pan_out1, pan_out0


def _embedding(channels: int, in_channels: int) -> nn.Sequential:
    """Five alternating 1x1/3x3 leaky-ReLU conv blocks: ``in -> c -> 2c -> c -> 2c -> c``."""
    return nn.Sequential(
        ConvBNAct(in_channels, channels, 1, 1, act="lrelu"),
        ConvBNAct(channels, channels * 2, 3, 1, act="lrelu"),
        ConvBNAct(channels * 2, channels, 1, 1, act="lrelu"),
        ConvBNAct(channels, channels * 2, 3, 1, act="lrelu"),
        ConvBNAct(channels * 2, channels, 1, 1, act="lrelu"),
    )


class YOLOFPN(nn.Module):
    """YOLOv3's top-down FPN over Darknet-53 (the neck of YOLOX-Darknet53).

    Returns ``(p3 [B, 128, H/8, W/8], p4 [B, 256, H/16, W/16], p5 [B, 512, H/32, W/32])``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.backbone = Darknet53()
        self.out_channels = (128, 256, 512)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.out1_cbl = ConvBNAct(512, 256, 1, 1, act="lrelu")
        self.out1 = _embedding(256, 512 + 256)
        self.out2_cbl = ConvBNAct(256, 128, 1, 1, act="lrelu")
        self.out2 = _embedding(128, 256 + 128)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dark3, dark4, dark5 = self.backbone(x)
        x1 = torch.cat([self.upsample(self.out1_cbl(dark5)), dark4], 1)  # 512->768/16
        out_dark4 = self.out1(x1)  # 768->256/16
        x2 = torch.cat([self.upsample(self.out2_cbl(out_dark4)), dark3], 1)  # 256->384/8
        out_dark3 = self.out2(x2)  # 384->128/8
        return out_dark3, out_dark4, dark5
