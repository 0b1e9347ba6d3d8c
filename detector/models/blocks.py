"""Building blocks of the YOLOX network family.

Every block is a few lines; attribute names follow the official YOLOX modules so that its
published state dicts load with their key names unchanged (``conv``/``bn`` in a conv block,
``dconv``/``pconv`` in a depthwise pair, ``conv1``..``conv3`` and ``m`` in a CSP layer, ...).
Batch norms use YOLOX's ``eps = 1e-3`` and ``momentum = 0.03``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

ACTIVATIONS = ("silu", "relu", "lrelu")
BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def get_activation(name: str) -> nn.Module:
    """``"silu"`` | ``"relu"`` | ``"lrelu"`` (slope 0.1) -> an in-place activation module."""
    if name == "silu":
        return nn.SiLU(inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "lrelu":
        return nn.LeakyReLU(0.1, inplace=True)
    raise ValueError(f"unknown activation '{name}'; expected one of {', '.join(ACTIVATIONS)}")


class ConvBNAct(nn.Module):
    """Conv2d (no bias, 'same' padding) -> BatchNorm2d -> activation.

    ``[B, C_in, H, W] -> [B, C_out, H / stride, W / stride]``. After ``fuse_model`` the batch norm
    is folded into ``conv`` and ``bn`` becomes ``nn.Identity``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ksize: int,
        stride: int = 1,
        groups: int = 1,
        act: str = "silu",
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, ksize, stride, (ksize - 1) // 2, groups=groups, bias=False
        )
        self.bn: nn.Module = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = get_activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class DWConv(nn.Module):
    """Depthwise ``ksize`` conv block then pointwise 1x1 conv block (YOLOX-Nano's convolution).

    ``[B, C_in, H, W] -> [B, C_out, H / stride, W / stride]``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, ksize: int, stride: int = 1, act: str = "silu"
    ) -> None:
        super().__init__()
        self.dconv = ConvBNAct(in_channels, in_channels, ksize, stride, groups=in_channels, act=act)
        self.pconv = ConvBNAct(in_channels, out_channels, 1, 1, act=act)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # oneDNN's bfloat16 depthwise kernels are slower than its float32 ones (measured about
            # 1.3x forward + backward), so under CPU autocast the depthwise half stays float32.
            with torch.autocast("cpu", enabled=False):
                x = self.dconv(x.float())
            return self.pconv(x)
        return self.pconv(self.dconv(x))


def conv_block(depthwise: bool) -> type[ConvBNAct] | type[DWConv]:
    """The 3x3 convolution a stage uses: ``DWConv`` when ``depthwise`` else ``ConvBNAct``."""
    return DWConv if depthwise else ConvBNAct


class Bottleneck(nn.Module):
    """1x1 conv -> 3x3 conv, plus the input when ``shortcut`` and the widths agree.

    ``[B, C_in, H, W] -> [B, C_out, H, W]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        shortcut: bool = True,
        expansion: float = 0.5,
        depthwise: bool = False,
        act: str = "silu",
    ) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = ConvBNAct(in_channels, hidden, 1, 1, act=act)
        self.conv2 = conv_block(depthwise)(hidden, out_channels, 3, 1, act=act)
        self.use_add = shortcut and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return y + x if self.use_add else y


class ResLayer(nn.Module):
    """Darknet residual: 1x1 conv to half width -> 3x3 conv back, plus the input (leaky ReLU).

    ``[B, C, H, W] -> [B, C, H, W]``.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        mid = in_channels // 2
        self.layer1 = ConvBNAct(in_channels, mid, 1, 1, act="lrelu")
        self.layer2 = ConvBNAct(mid, in_channels, 3, 1, act="lrelu")

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layer2(self.layer1(x))


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling: 1x1 conv to half width, max-pools (5, 9, 13; stride 1) stacked
    with their input, 1x1 conv out. ``[B, C_in, H, W] -> [B, C_out, H, W]``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_sizes: tuple[int, ...] = (5, 9, 13),
        act: str = "silu",
    ) -> None:
        super().__init__()
        hidden = in_channels // 2
        self.conv1 = ConvBNAct(in_channels, hidden, 1, 1, act=act)
        self.m = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernel_sizes)
        self.conv2 = ConvBNAct(hidden * (len(kernel_sizes) + 1), out_channels, 1, 1, act=act)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = torch.cat([x] + [pool(x) for pool in self.m], dim=1)
        return self.conv2(x)


class CSPLayer(nn.Module):
    """CSP bottleneck with three convolutions (YOLOv5's C3).

    Two 1x1 branches of ``out * expansion`` channels; ``n`` bottlenecks on the first; the two
    concatenated and mixed by a 1x1 conv. ``[B, C_in, H, W] -> [B, C_out, H, W]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n: int = 1,
        shortcut: bool = True,
        expansion: float = 0.5,
        depthwise: bool = False,
        act: str = "silu",
    ) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = ConvBNAct(in_channels, hidden, 1, 1, act=act)
        self.conv2 = ConvBNAct(in_channels, hidden, 1, 1, act=act)
        self.conv3 = ConvBNAct(2 * hidden, out_channels, 1, 1, act=act)
        self.m = nn.Sequential(
            *(Bottleneck(hidden, hidden, shortcut, 1.0, depthwise, act) for _ in range(n))
        )

    def forward(self, x: Tensor) -> Tensor:
        main = self.m(self.conv1(x))
        side = self.conv2(x)
        return self.conv3(torch.cat((main, side), dim=1))


class Focus(nn.Module):
    """Space-to-depth stem: every 2x2 pixel block becomes 4 channels, then a conv block.

    ``[B, C_in, H, W] -> [B, C_out, H / 2, W / 2]``. The four sub-images are stacked in YOLOX's
    order: top-left, bottom-left, top-right, bottom-right.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ksize: int = 1,
        stride: int = 1,
        act: str = "silu",
    ) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels * 4, out_channels, ksize, stride, act=act)

    def forward(self, x: Tensor) -> Tensor:
        top_left = x[..., ::2, ::2]
        bottom_left = x[..., 1::2, ::2]
        top_right = x[..., ::2, 1::2]
        bottom_right = x[..., 1::2, 1::2]
        return self.conv(torch.cat((top_left, bottom_left, top_right, bottom_right), dim=1))
