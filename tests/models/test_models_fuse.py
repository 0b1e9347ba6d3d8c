"""Conv + batch-norm fusion leaves the outputs unchanged."""

from __future__ import annotations

import copy

import torch
from golden_fill import fill_state_dict, golden_input
from torch import nn

from detector.models import build_model, fuse_model
from detector.models.blocks import ConvBNAct
from detector.models.fuse import fuse_conv_bn


def test_fuse_conv_bn_matches_conv_then_bn():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=True)
    bn = nn.BatchNorm2d(6, eps=1e-3)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    bn.eval()
    x = torch.randn(2, 4, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(fuse_conv_bn(conv, bn)(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_fused_nano_gives_the_same_outputs():
    model = build_model("yolox_nano", num_classes=5).eval()
    model.load_state_dict(fill_state_dict(model.state_dict(), gain=1.075))
    x = golden_input((1, 3, 64, 96))
    with torch.no_grad():
        expected = model(x)
        fused = fuse_model(copy.deepcopy(model))
        got = fused(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert all(m.conv.bias is not None for m in fused.modules() if isinstance(m, ConvBNAct))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # fusing is in place and idempotent
    assert fuse_model(fused) is fused
    # the original still has its batch norms
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
