"""Folding batch norm into the preceding convolution for inference."""

from __future__ import annotations

import torch
from torch import nn

from detector.models.blocks import ConvBNAct


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv with bias equal to ``bn(conv(x))`` with ``bn`` in evaluation mode.

    ``w' = w * gamma / sqrt(var + eps)``, ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``.
    """
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [C_out]
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused.requires_grad_(False)


def fuse_model(model: nn.Module) -> nn.Module:
    """Fold every :class:`ConvBNAct`'s batch norm into its conv, **in place**; returns ``model``.

    Outputs in evaluation mode are unchanged (to float rounding); the model is meant for
    inference only afterwards (the batch norms are gone, ``bn`` becomes ``nn.Identity`` and the
    state dict loses its ``bn.*`` keys). Fuse a ``copy.deepcopy`` to keep the original.
    """
    for module in model.modules():
        if isinstance(module, ConvBNAct) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn(module.conv, module.bn)
            module.bn = nn.Identity()
    return model
