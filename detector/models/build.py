"""``build_model(name)``: a YOLOX network from its config."""

from __future__ import annotations

from detector.models.config import ModelConfig, get_model_config
from detector.models.head import DecoupledHead
from detector.models.necks import PAFPN, YOLOFPN
from detector.models.yolox import YOLOX


def build_from_config(config: ModelConfig, num_classes: int = 80) -> YOLOX:
    """A freshly initialised :class:`YOLOX` (training mode) for ``config``."""
    if config.backbone == "darknet53":
        neck = YOLOFPN()
    else:
        neck = PAFPN(config.depth, config.width, config.in_channels, config.depthwise, config.act)
    head = DecoupledHead(
        num_classes,
        in_channels=[int(c * config.width) for c in config.in_channels],
        hidden=int(256 * config.width),
        depthwise=config.depthwise,
        act=config.act,
    )
    return YOLOX(neck, head, name=config.name)


def build_model(name: str, num_classes: int = 80) -> YOLOX:
    """``yolox_nano`` ... ``yolox_x``, ``yolox_darknet53`` (or a model YAML path) -> YOLOX.

    The model is in training mode, initialised as YOLOX initialises it (PyTorch's default conv
    init, batch norm eps 1e-3 / momentum 0.03, prior-probability 0.01 biases).
    """
    return build_from_config(get_model_config(name), num_classes)
