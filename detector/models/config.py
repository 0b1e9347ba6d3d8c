"""Model configs: one YAML per size under ``configs/models/``, loaded into :class:`ModelConfig`.

``get_model_config("yolox_s")`` reads ``<repo>/configs/models/yolox_s.yaml``; a path to a YAML
file works too. Unknown keys are errors that name the file and suggest the closest key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detector.core.config import ConfigError, configs_dir, from_mapping, load_yaml, suggest
from detector.core.defaults import INPUT_STRIDE
from detector.models.blocks import ACTIVATIONS

CONFIG_DIR = configs_dir() / "models"
BACKBONES = ("cspdarknet", "darknet53")


@dataclass(frozen=True)
class ModelConfig:
    """One model size.

    Attributes:
        name: model name (``yolox_s``); recorded in checkpoints.
        backbone: ``"cspdarknet"`` (with the PAFPN neck) or ``"darknet53"`` (with YOLOv3's FPN).
        depth: depth multiplier (CSPDarknet/PAFPN only).
        width: width multiplier; the head has ``int(256 * width)`` channels.
        depthwise: depthwise-separable 3x3 convolutions (YOLOX-Nano).
        act: activation, ``silu`` | ``relu`` | ``lrelu``.
        input_size: default square input side in pixels (a multiple of 32).
        in_channels: neck output channels at width 1 (``[256, 512, 1024]``; Darknet-53's FPN
            gives ``[128, 256, 512]``).
        train: free-form per-size training defaults, validated by the trainer.
    """

    name: str
    backbone: str = "cspdarknet"
    depth: float = 1.0
    width: float = 1.0
    depthwise: bool = False
    act: str = "silu"
    input_size: int = 640
    in_channels: tuple[int, int, int] = (256, 512, 1024)
    train: dict[str, Any] = field(default_factory=dict)


def model_names() -> list[str]:
    """Names of the models with a YAML under ``configs/models/``, sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _config_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"{path}: model config file not found")
        return path
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        known = model_names()
        raise ConfigError(
            f"unknown model '{name}'{suggest(name, known)}; known models: {', '.join(known)}"
        )
    return path


def _check(config: ModelConfig, source: str) -> None:
    if config.backbone not in BACKBONES:
        raise ConfigError(
            f"{source}: backbone '{config.backbone}' is not one of {', '.join(BACKBONES)}"
        )
    if config.act not in ACTIVATIONS:
        raise ConfigError(f"{source}: act '{config.act}' is not one of {', '.join(ACTIVATIONS)}")
    if config.depth <= 0 or config.width <= 0:
        raise ConfigError(f"{source}: depth and width must be positive")
    if config.input_size <= 0 or config.input_size % INPUT_STRIDE:
        raise ConfigError(f"{source}: input_size must be a positive multiple of {INPUT_STRIDE}")


def get_model_config(name: str) -> ModelConfig:
    """The :class:`ModelConfig` of a model name or of a YAML file path; errors name the file."""
    path = _config_path(name)
    config = from_mapping(ModelConfig, load_yaml(path), source=str(path))
    _check(config, str(path))
    return config
