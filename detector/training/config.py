"""The training configuration: one typed dataclass, its documented defaults in
``configs/train/default.yaml``, per-size defaults from the model's YAML, then user overrides.

Precedence, lowest first: the dataclass defaults (= ``configs/train/default.yaml``), the ``train:``
section of the model config (YOLOX's per-size augmentation choices), the short-schedule defaults
when ``schedule: auto`` and the run is short, and ``key=value`` overrides from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from detector.core.config import ConfigError, apply_overrides, configs_dir, from_mapping, load_yaml
from detector.core.defaults import EVAL_CONF, EVAL_IOU, INPUT_STRIDE
from detector.data import AugmentConfig

DEFAULT_CONFIG = configs_dir() / "train" / "default.yaml"


@dataclass(frozen=True)
class TrainConfig:
    """Every constant of a training run; see ``configs/train/default.yaml`` for each key."""

    name: str = "exp"
    output_dir: str = "runs"
    epochs: int = 300
    batch: int = 64
    imgsz: int | None = None
    workers: int | None = None
    threads: int | None = None
    device: str = "auto"
    seed: int = 0
    cache: bool = False
    schedule: str = "auto"
    short_run_epochs: int = 100
    optimizer: str = "sgd"
    lr_per_64: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: int = 5
    warmup_lr_start: float = 0.0
    min_lr_ratio: float = 0.05
    no_aug_epochs: int = 15
    ema: bool = True
    ema_decay: float = 0.9998
    amp: bool = True
    channels_last: bool = True
    grad_clip: float = 0.0
    multiscale_range: int = 5
    multiscale_sizes: tuple[int, int] | None = None
    multiscale_interval: int = 10
    iou_type: str = "iou"
    iou_weight: float = 5.0
    simota_radius: float = 2.5
    simota_topk: int = 10
    eval_interval: int = 10
    eval_conf: float = EVAL_CONF
    eval_nms: float = EVAL_IOU
    eval_batch: int = 8
    sync_bn: bool = False
    save_interval: int = 1
    plots: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    short_run: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            (self.epochs > 0, "epochs must be positive"),
            (self.batch > 0, "batch must be positive"),
            (self.workers is None or self.workers >= 0, "workers must be >= 0 (or null)"),
            (self.threads is None or self.threads >= 1, "threads must be >= 1 (or null)"),
            (self.no_aug_epochs >= 0, "no_aug_epochs must be >= 0"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (self.optimizer in ("sgd", "adamw"), "optimizer must be 'sgd' or 'adamw'"),
            (self.iou_type in ("iou", "giou"), "iou_type must be 'iou' or 'giou'"),
            (self.schedule in ("auto", "yolox"), "schedule must be 'auto' or 'yolox'"),
            (
                self.imgsz is None or self.imgsz % INPUT_STRIDE == 0,
                f"imgsz must be a multiple of {INPUT_STRIDE}",
            ),
            (self.eval_interval > 0, "eval_interval must be positive"),
            (
                self.multiscale_sizes is None
                or (
                    self.multiscale_sizes[0] % INPUT_STRIDE == 0
                    and self.multiscale_sizes[1] % INPUT_STRIDE == 0
                    and INPUT_STRIDE <= self.multiscale_sizes[0] <= self.multiscale_sizes[1]
                ),
                f"multiscale_sizes must be [min, max], multiples of {INPUT_STRIDE}, min <= max",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"train config: {message}")

    def multiscale_bounds(self, base: int) -> tuple[int, int] | None:
        """Smallest and largest multi-scale input size, or ``None`` when multi-scale is off."""
        if self.multiscale_range <= 0:
            return None
        if self.multiscale_sizes is not None:
            return self.multiscale_sizes
        return max(32, base - 32 * self.multiscale_range), base + 32 * self.multiscale_range

    @property
    def is_short(self) -> bool:
        return self.schedule == "auto" and self.epochs <= self.short_run_epochs


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def build_train_config(
    model_defaults: dict[str, Any] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict[str, Any] | None = None,
    source: str = "train config",
) -> TrainConfig:
    """Compose the run's config (see the module docstring for the precedence).

    ``base`` replaces the default YAML (a resumed run passes its saved config here).
    """
    data = load_yaml(DEFAULT_CONFIG) if base is None else dict(base)
    if base is None and model_defaults:
        data = _merge(data, model_defaults)
    user = apply_overrides({}, overrides, schema=TrainConfig)
    merged = _merge(data, user)
    config = from_mapping(TrainConfig, merged, source)
    if base is None and config.is_short and config.short_run:
        # short schedule: its defaults apply where the user did not set the key
        short = {k: v for k, v in config.short_run.items() if k not in user}
        config = from_mapping(TrainConfig, _merge(merged, short), f"{source} (short_run)")
    return config
