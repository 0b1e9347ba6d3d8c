"""YOLOX's decoupled head: per level a 1x1 stem, then a classification branch and a regression
branch of two 3x3 conv blocks each; 1x1 predictions of class (C), box (4) and objectness (1).

The head returns raw logits only; decoding lives in :mod:`detector.models.decode` and the losses
elsewhere, so nothing here changes between training, evaluation and export.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detector.models.blocks import ConvBNAct, conv_block


class DecoupledHead(nn.Module):
    """Args:
        num_classes: number of classes ``C``.
        in_channels: channels of the three input maps.
        hidden: channels inside the head (``int(256 * width)`` in YOLOX).
        depthwise: depthwise-separable 3x3 convolutions (YOLOX-Nano).
        act: activation of every conv block.
        prior_prob: initial class and objectness probability (bias ``-log((1 - p) / p)``).

    ``forward``: three maps ``[B, in_channels[i], H_i, W_i]`` -> list of ``[B, 5 + C, H_i, W_i]``
    raw logits with channels ``reg (4) | obj (1) | cls (C)``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: Sequence[int],
        hidden: int = 256,
        depthwise: bool = False,
        act: str = "silu",
        prior_prob: float = 1e-2,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        conv = conv_block(depthwise)
        self.num_classes = num_classes

        def branch() -> nn.Sequential:
            return nn.Sequential(
                conv(hidden, hidden, 3, 1, act=act), conv(hidden, hidden, 3, 1, act=act)
            )

        levels = range(len(in_channels))  # registration order = the official key order
        self.cls_convs = nn.ModuleList(branch() for _ in levels)
        self.reg_convs = nn.ModuleList(branch() for _ in levels)
        self.cls_preds = nn.ModuleList(nn.Conv2d(hidden, num_classes, 1) for _ in levels)
        self.reg_preds = nn.ModuleList(nn.Conv2d(hidden, 4, 1) for _ in levels)
        self.obj_preds = nn.ModuleList(nn.Conv2d(hidden, 1, 1) for _ in levels)
        self.stems = nn.ModuleList(ConvBNAct(c, hidden, 1, 1, act=act) for c in in_channels)
        self.initialize_biases(prior_prob)

    @torch.no_grad()
    def initialize_biases(self, prior_prob: float) -> None:
        """Start every class and objectness probability at ``prior_prob`` (focal-loss prior)."""
        bias = -math.log((1 - prior_prob) / prior_prob)
        for pred in (*self.cls_preds, *self.obj_preds):
            pred.bias.fill_(bias)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        outputs = []
        for k, x in enumerate(features):
            x = self.stems[k](x)
            cls_feat = self.cls_convs[k](x)
            reg_feat = self.reg_convs[k](x)
            reg = self.reg_preds[k](reg_feat)  # [B, 4, H, W]
            obj = self.obj_preds[k](reg_feat)  # [B, 1, H, W]
            cls = self.cls_preds[k](cls_feat)  # [B, C, H, W]
            outputs.append(torch.cat([reg, obj, cls], 1))
        return outputs
