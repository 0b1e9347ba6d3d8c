"""TrainConfig composition: documented defaults, per-size defaults, short runs, overrides."""

from __future__ import annotations

import pytest

from detector.core.config import ConfigError, load_yaml
from detector.models import get_model_config
from detector.training.config import DEFAULT_CONFIG, TrainConfig, build_train_config


def test_default_yaml_documents_every_key():
    documented = set(load_yaml(DEFAULT_CONFIG))
    fields = set(TrainConfig.__dataclass_fields__)
    assert documented == fields


def test_long_runs_keep_the_official_recipe():
    config = build_train_config(overrides=["epochs=300"])
    assert (config.warmup_epochs, config.no_aug_epochs, config.lr_per_64) == (5, 15, 0.01)
    assert config.multiscale_range == 5


def test_short_runs_take_short_run_values_unless_set_by_the_user():
    short = build_train_config(overrides=["epochs=40"])
    table = short.short_run
    assert short.warmup_epochs == table["warmup_epochs"]
    assert short.no_aug_epochs == table["no_aug_epochs"]
    mine = build_train_config(overrides=["epochs=40", "no_aug_epochs=7"])
    assert mine.no_aug_epochs == 7
    official = build_train_config(overrides=["epochs=40", "schedule=yolox"])
    assert official.no_aug_epochs == 15


def test_model_defaults_sit_between_defaults_and_overrides():
    nano = get_model_config("yolox_nano").train
    config = build_train_config(model_defaults=nano, overrides=["epochs=300"])
    assert config.augment.mosaic_scale == (0.5, 1.5)
    assert config.augment.mixup_prob == 0.0
    assert config.multiscale_bounds(416) == (320, 640)
    config = build_train_config(
        model_defaults=nano, overrides=["epochs=300", "augment.mixup_prob=0.5"]
    )
    assert config.augment.mixup_prob == 0.5
    s = build_train_config(model_defaults=get_model_config("yolox_s").train, overrides=[])
    assert s.augment.mixup_prob == 1.0 and s.augment.mosaic_scale == (0.1, 2.0)
    assert s.multiscale_bounds(640) == (480, 800)


def test_nano_short_runs_take_their_own_rate_and_no_aug_length():
    """nano's YAML doubles the short-run AdamW rate and shortens the no-aug phase (issue 13);
    tiny keeps the shared values, long runs and the official schedule are untouched, and the
    user's own keys still win."""
    nano = get_model_config("yolox_nano").train
    short = build_train_config(model_defaults=nano, overrides=["epochs=30"])
    assert (short.optimizer, short.lr_per_64, short.no_aug_epochs) == ("adamw", 0.024, 3)
    assert short.warmup_epochs == 2 and short.multiscale_range == 0
    mine = build_train_config(model_defaults=nano, overrides=["epochs=30", "lr_per_64=0.006"])
    assert (mine.lr_per_64, mine.no_aug_epochs) == (0.006, 3)
    for overrides in (["epochs=300"], ["epochs=30", "schedule=yolox"]):
        official = build_train_config(model_defaults=nano, overrides=overrides)
        assert (official.optimizer, official.lr_per_64, official.no_aug_epochs) == ("sgd", 0.01, 15)
    tiny = build_train_config(model_defaults=get_model_config("yolox_tiny").train,
                              overrides=["epochs=30"])  # fmt: skip
    assert (tiny.optimizer, tiny.lr_per_64, tiny.no_aug_epochs) == ("adamw", 0.012, 5)


def test_bad_overrides_are_clear_errors():
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        build_train_config(overrides=["epoch=3"])
    with pytest.raises(ConfigError, match="did you mean 'mixup_prob'"):
        build_train_config(overrides=["augment.mixup=0"])
    with pytest.raises(ConfigError, match="imgsz must be a multiple of 32"):
        build_train_config(overrides=["imgsz=100"])
    with pytest.raises(ConfigError, match="optimizer must be"):
        build_train_config(overrides=["optimizer=lion"])
