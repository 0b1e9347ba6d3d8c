"""``schedule=yolox`` is the official YOLOX recipe: every constant of the official Exp for each
size against the run config our trainer builds (issue 13 compares our short-run defaults with
it, so it must be the real thing). Skipped where the official ``yolox`` package is missing."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from detector.models import get_model_config
from detector.training.config import build_train_config

SIZES = {"yolox_nano": "yolox-nano", "yolox_tiny": "yolox-tiny", "yolox_s": "yolox-s"}


def official_exp(name: str):
    exp_module = pytest.importorskip("yolox.exp")
    return exp_module.get_exp(exp_name=name)


@pytest.mark.parametrize("model", sorted(SIZES))
def test_schedule_yolox_is_the_official_exp(model: str) -> None:
    exp = official_exp(SIZES[model])
    for epochs in (40, 300):  # a short run under schedule=yolox is the official recipe too
        ours = build_train_config(
            model_defaults=get_model_config(model).train,
            overrides=[f"epochs={epochs}", "schedule=yolox"],
        )
        assert (ours.optimizer, ours.nesterov) == ("sgd", True)
        assert ours.lr_per_64 == pytest.approx(exp.basic_lr_per_img * 64)
        assert (ours.momentum, ours.weight_decay) == (exp.momentum, exp.weight_decay)
        assert (ours.warmup_epochs, ours.warmup_lr_start) == (exp.warmup_epochs, exp.warmup_lr)
        assert (ours.no_aug_epochs, ours.min_lr_ratio) == (exp.no_aug_epochs, exp.min_lr_ratio)
        assert ours.ema is exp.ema
        base = exp.input_size[0]
        random_size = getattr(exp, "random_size", None)  # else +- multiscale_range x 32
        expected = (
            (32 * random_size[0], 32 * random_size[1])
            if random_size is not None
            else (base - 32 * exp.multiscale_range, base + 32 * exp.multiscale_range)
        )
        assert ours.multiscale_bounds(base) == expected
        augment = ours.augment
        assert augment.mosaic_prob == exp.mosaic_prob
        assert augment.mixup_prob == (exp.mixup_prob if exp.enable_mixup else 0.0)
        assert (augment.hsv_prob, augment.flip_prob) == (exp.hsv_prob, exp.flip_prob)
        assert (augment.degrees, augment.translate, augment.shear) == (
            exp.degrees,
            exp.translate,
            exp.shear,
        )
        assert tuple(augment.mosaic_scale) == tuple(exp.mosaic_scale)
        assert tuple(augment.mixup_scale) == tuple(exp.mixup_scale)
        assert (ours.eval_conf, ours.eval_nms) == (exp.test_conf, exp.nmsthre)


def test_ema_decay_is_the_official_trainers() -> None:
    """The official trainer builds ``ModelEMA(model, 0.9998)`` (read from its source: importing
    it needs tensorboard), ramped by ``1 - exp(-updates / 2000)`` as ours is."""
    spec = importlib.util.find_spec("yolox")
    if spec is None or spec.origin is None:
        pytest.skip("the official yolox package is not installed")
    root = Path(spec.origin).parent
    trainer = (root / "core" / "trainer.py").read_text()
    decay = float(re.search(r"ModelEMA\(model, ([0-9.]+)\)", trainer).group(1))  # type: ignore[union-attr]
    assert build_train_config(overrides=["schedule=yolox"]).ema_decay == decay
    assert "1 - math.exp(-x / 2000)" in (root / "utils" / "ema.py").read_text()
