"""YOLOX's three parameter groups: every trainable parameter in exactly one, decay only on
the non-norm weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detector.training.optim import GROUP_NAMES, build_adamw, build_sgd, param_groups, set_lr


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.SiLU())
        self.head = nn.Conv2d(8, 4, 1)  # weight + bias
        self.norm = nn.LayerNorm(4)  # weight + bias
        self.gn = nn.GroupNorm(2, 8)
        self.fc = nn.Linear(4, 2)
        self.shared = self.fc  # the same parameters reached twice
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.scale = nn.Parameter(torch.ones(1))  # a free parameter: a weight


def test_every_parameter_in_exactly_one_group() -> None:
    model = _Toy()
    opt = build_sgd(model, lr=0.01)
    assert [g["name"] for g in opt.param_groups] == list(GROUP_NAMES)
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(grouped) == len(set(grouped)) == len(trainable)
    assert set(grouped) == trainable
    norm, weights, biases = opt.param_groups
    assert {id(p) for p in norm["params"]} == {
        id(model.stem[1].weight),
        id(model.norm.weight),
        id(model.gn.weight),
    }
    assert {id(p) for p in biases["params"]} == {
        id(model.stem[1].bias),
        id(model.head.bias),
        id(model.norm.bias),
        id(model.gn.bias),
        id(model.fc.bias),
    }
    assert {id(p) for p in weights["params"]} == {
        id(model.stem[0].weight),
        id(model.head.weight),
        id(model.fc.weight),
        id(model.scale),
    }


def test_decay_only_on_weights_and_sgd_settings() -> None:
    opt = build_sgd(_Toy(), lr=0.02, momentum=0.8, nesterov=True, weight_decay=1e-3)
    decays = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert decays == {"norm_weights": 0.0, "weights": 1e-3, "biases": 0.0}
    for g in opt.param_groups:
        assert g["lr"] == 0.02 and g["momentum"] == 0.8 and g["nesterov"] is True
    set_lr(opt, 0.005)
    assert [g["lr"] for g in opt.param_groups] == [0.005] * 3


def test_groups_match_yolox_rule_on_bn_models() -> None:
    """On a conv/BN model our split is YOLOX's (bias -> pg2, BN weight -> pg0, else pg1)."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2)
    )
    pg0, pg1, pg2 = [], [], []
    for _, v in model.named_modules():
        if hasattr(v, "bias") and isinstance(v.bias, nn.Parameter):
            pg2.append(v.bias)
        if isinstance(v, nn.BatchNorm2d):
            pg0.append(v.weight)
        elif hasattr(v, "weight") and isinstance(v.weight, nn.Parameter):
            pg1.append(v.weight)
    ours = param_groups(model)
    for a, b in zip(ours, (pg0, pg1, pg2), strict=True):
        assert [id(p) for p in a] == [id(p) for p in b]


def test_a_step_runs_and_no_norm_model_keeps_three_groups() -> None:
    model = nn.Sequential(nn.Linear(3, 3))
    opt = build_sgd(model, lr=0.1)
    assert [len(g["params"]) for g in opt.param_groups] == [0, 1, 1]
    before = model[0].weight.detach().clone()
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    assert not torch.equal(before, model[0].weight)
    state = opt.state_dict()
    opt2 = build_sgd(nn.Sequential(nn.Linear(3, 3)), lr=0.1)
    opt2.load_state_dict(state)  # same group layout: resume works


def test_adamw_uses_the_same_groups() -> None:
    opt = build_adamw(_Toy(), lr=1e-3, weight_decay=0.05)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == pytest.approx([0.0, 0.05, 0.0])


def test_build_optimizer_by_name() -> None:
    from detector.training.optim import build_optimizer

    sgd = build_optimizer("sgd", _Toy(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[1]["weight_decay"] == 5e-4
    adamw = build_optimizer("adamw", _Toy(), lr=1e-3, momentum=0.9, weight_decay=0.05)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match="unknown optimizer 'adam'.*sgd, adamw"):
        build_optimizer("adam", _Toy(), lr=0.01)
