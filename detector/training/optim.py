"""Optimizers with YOLOX's three parameter groups.

Group 0: normalisation-layer weights (no weight decay); group 1: every other weight (decay);
group 2: biases (no decay). The order is fixed and each group carries a ``name``, so optimizer
state dicts of different runs line up. Frozen parameters (``requires_grad=False``) are left out.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

LOGGER = logging.getLogger(__name__)

# Layers whose weight is a scale, not a filter: decaying it towards 0 only hurts.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)

GROUP_NAMES: tuple[str, str, str] = ("norm_weights", "weights", "biases")


def param_groups(
    model: nn.Module,
) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """Split ``model``'s trainable parameters into (norm weights, other weights, biases).

    A parameter named ``bias`` is a bias; any other parameter of a normalisation layer (see
    ``NORM_TYPES``) is a norm weight; everything else is a weight. Shared parameters appear once.
    """
    norm: list[nn.Parameter] = []
    weights: list[nn.Parameter] = []
    biases: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, NORM_TYPES)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if name == "bias":
                biases.append(param)
            elif is_norm:
                norm.append(param)
            else:
                weights.append(param)
    return norm, weights, biases


def _groups(model: nn.Module, weight_decay: float) -> list[dict]:
    norm, weights, biases = param_groups(model)
    LOGGER.debug(
        "optimizer groups: %d norm weights, %d weights (decay %g), %d biases",
        len(norm),
        len(weights),
        weight_decay,
        len(biases),
    )
    return [
        {"params": norm, "weight_decay": 0.0, "name": GROUP_NAMES[0]},
        {"params": weights, "weight_decay": weight_decay, "name": GROUP_NAMES[1]},
        {"params": biases, "weight_decay": 0.0, "name": GROUP_NAMES[2]},
    ]


def build_sgd(
    model: nn.Module,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 5e-4,
) -> torch.optim.SGD:
    """SGD over YOLOX's three groups; only the non-norm weights are decayed."""
    return torch.optim.SGD(
        _groups(model, weight_decay), lr=lr, momentum=momentum, nesterov=nesterov
    )


def build_adamw(
    model: nn.Module,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.05,
) -> torch.optim.AdamW:
    """AdamW over the same three groups (decoupled decay on the non-norm weights only)."""
    return torch.optim.AdamW(_groups(model, weight_decay), lr=lr, betas=betas)


OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")


def build_optimizer(
    name: str,
    model: nn.Module,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 5e-4,
) -> torch.optim.Optimizer:
    """``build_sgd`` or ``build_adamw`` by name (for AdamW, ``momentum`` is beta1 and
    ``nesterov`` is ignored)."""
    if name == "sgd":
        return build_sgd(model, lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    if name == "adamw":
        return build_adamw(model, lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group (YOLOX uses one lr for all three)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
