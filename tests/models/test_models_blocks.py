"""Shapes and behaviour of every building block, backbone, neck and the head."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detector.models.backbones import CSPDarknet, Darknet53
from detector.models.blocks import (
    Bottleneck,
    ConvBNAct,
    CSPLayer,
    DWConv,
    Focus,
    ResLayer,
    SPPBottleneck,
    get_activation,
)
from detector.models.head import DecoupledHead
from detector.models.necks import PAFPN, YOLOFPN


def x(c: int = 8, h: int = 16, w: int = 24) -> torch.Tensor:
    return torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "ksize,stride,expected", [(1, 1, (16, 24)), (3, 1, (16, 24)), (3, 2, (8, 12))]
)
def test_conv_bn_act_shape_and_bn_settings(ksize, stride, expected):
    block = ConvBNAct(8, 12, ksize, stride)
    assert block(x()).shape == (2, 12, *expected)
    assert block.conv.bias is None
    assert block.bn.eps == 1e-3 and block.bn.momentum == 0.03


def test_activations():
    assert isinstance(get_activation("silu"), nn.SiLU)
    lrelu = get_activation("lrelu")
    assert isinstance(lrelu, nn.LeakyReLU) and lrelu.negative_slope == 0.1
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        get_activation("gelu")


def test_dwconv_is_depthwise_then_pointwise():
    block = DWConv(8, 16, 3, stride=2)
    assert block.dconv.conv.groups == 8 and block.dconv.conv.weight.shape == (8, 1, 3, 3)
    assert block.pconv.conv.weight.shape == (16, 8, 1, 1)
    assert block(x()).shape == (2, 16, 8, 12)


def test_bottleneck_shortcut_only_when_widths_agree():
    assert Bottleneck(8, 8).use_add and not Bottleneck(8, 16).use_add
    assert not Bottleneck(8, 8, shortcut=False).use_add
    block = Bottleneck(8, 8).eval()
    inp = x()
    with torch.no_grad():
        assert torch.allclose(block(inp), block.conv2(block.conv1(inp)) + inp)
    assert Bottleneck(8, 16, depthwise=True)(inp).shape == (2, 16, 16, 24)


def test_res_layer_adds_input_and_uses_leaky_relu():
    layer = ResLayer(8).eval()
    assert layer.layer1.conv.out_channels == 4
    assert isinstance(layer.layer1.act, nn.LeakyReLU)
    inp = x()
    with torch.no_grad():
        assert torch.allclose(layer(inp), inp + layer.layer2(layer.layer1(inp)))


def test_spp_bottleneck_keeps_size_and_concatenates_four_maps():
    spp = SPPBottleneck(16, 10)
    assert spp.conv2.conv.in_channels == 8 * 4
    assert spp(x(16)).shape == (2, 10, 16, 24)


@pytest.mark.parametrize("n,shortcut", [(1, True), (3, False)])
def test_csp_layer(n, shortcut):
    layer = CSPLayer(8, 16, n=n, shortcut=shortcut)
    assert len(layer.m) == n and layer.conv1.conv.out_channels == 8
    assert all(b.use_add == shortcut for b in layer.m)
    assert layer(x()).shape == (2, 16, 16, 24)


def test_focus_space_to_depth_order():
    focus = Focus(1, 4, ksize=1)
    # make the conv an identity on the 4 stacked sub-images, with BN and activation neutral
    with torch.no_grad():
        focus.conv.conv.weight.copy_(torch.eye(4).reshape(4, 4, 1, 1))
    focus.conv.bn = nn.Identity()
    focus.conv.act = nn.Identity()
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = focus(image)
    assert out.shape == (1, 4, 2, 2)
    assert out[0, :, 0, 0].tolist() == [0.0, 4.0, 1.0, 5.0]  # top-left, bottom-left, top-right, ...


@pytest.mark.parametrize("depthwise", [False, True])
def test_cspdarknet_strides_and_widths(depthwise):
    net = CSPDarknet(0.33, 0.25, depthwise=depthwise)
    outs = net(torch.zeros(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 8, 12), (1, 128, 4, 6), (1, 256, 2, 3)]
    assert net.out_channels == (64, 128, 256)
    assert len(net.dark3[1].m) == 3 and len(net.dark2[1].m) == 1
    assert isinstance(net.dark2[0], DWConv if depthwise else ConvBNAct)


def test_darknet53_stages():
    net = Darknet53()
    assert [len(s) for s in (net.dark2, net.dark3, net.dark4)] == [3, 9, 9]
    assert len(net.dark5) == 1 + 4 + 5  # down conv, 4 residuals, SPP block
    outs = net(torch.zeros(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 256, 8, 8), (1, 512, 4, 4), (1, 512, 2, 2)]


def test_pafpn_shapes():
    neck = PAFPN(0.33, 0.25)
    outs = neck(torch.zeros(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 8, 12), (1, 128, 4, 6), (1, 256, 2, 3)]


def test_yolofpn_shapes():
    outs = YOLOFPN()(torch.zeros(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]


def test_head_outputs_and_prior_bias():
    head = DecoupledHead(3, in_channels=(16, 32, 64), hidden=16)
    feats = [torch.zeros(2, c, s, s) for c, s in ((16, 8), (32, 4), (64, 2))]
    outs = head(feats)
    assert [tuple(o.shape) for o in outs] == [(2, 8, 8, 8), (2, 8, 4, 4), (2, 8, 2, 2)]
    prior = -math.log((1 - 0.01) / 0.01)
    for pred in (*head.cls_preds, *head.obj_preds):
        assert torch.allclose(pred.bias, torch.full_like(pred.bias, prior))
    assert len(head.cls_convs[0]) == 2 and head.stems[0].conv.kernel_size == (1, 1)
    # channel layout reg | obj | cls
    with torch.no_grad():
        head.obj_preds[0].bias.fill_(7.0)
    assert torch.all(head(feats)[0][:, 4] == 7.0)


def test_head_rejects_zero_classes():
    with pytest.raises(ValueError, match="num_classes"):
        DecoupledHead(0, in_channels=(8, 8, 8), hidden=8)
