"""YOLOX "yoloxwarmcos": hand-computed points, continuity at the phase boundaries, the lr
scaling rule."""

from __future__ import annotations

import math

import pytest

from detector.training.schedule import lr_at, scaled_lr

# 10 iterations per epoch, 30 epochs: warm-up 0..50, cosine 50..250, flat 250..300.
KW = {
    "iters_per_epoch": 10,
    "total_epochs": 30,
    "base_lr": 0.01,
    "warmup_epochs": 5,
    "no_aug_epochs": 5,
    "min_lr_ratio": 0.05,
}
MIN_LR = 0.01 * 0.05


@pytest.mark.parametrize(
    ("iteration", "expected"),
    [
        (0, 0.0),
        (10, 0.01 * (10 / 50) ** 2),  # 0.0004
        (25, 0.0025),  # quarter of the lr at half the warm-up
        (50, 0.01),  # end of warm-up: base lr
        (100, MIN_LR + 0.5 * (0.01 - MIN_LR) * (1 + math.cos(math.pi * 0.25))),
        (150, MIN_LR + 0.5 * (0.01 - MIN_LR)),  # half-way down the cosine: 0.00525
        (249, MIN_LR + 0.5 * (0.01 - MIN_LR) * (1 + math.cos(math.pi * 199 / 200))),
        (250, MIN_LR),  # no-aug phase: flat
        (299, MIN_LR),
        (400, MIN_LR),  # past the end stays flat
    ],
)
def test_hand_computed_points(iteration: int, expected: float) -> None:
    assert lr_at(iteration, **KW) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_continuity_at_boundaries() -> None:
    lrs = [lr_at(i, **KW) for i in range(300)]
    steps = [abs(b - a) for a, b in zip(lrs, lrs[1:])]
    # the biggest step anywhere is a warm-up step (the quadratic's last one: 0.01 * 99/2500)
    assert max(steps) == pytest.approx(0.01 * (50**2 - 49**2) / 50**2)
    # with fine iterations the jumps across both boundaries vanish: the schedule is continuous
    fine = {**KW, "iters_per_epoch": 100_000}
    for boundary in (5 * 100_000, 25 * 100_000):
        around = [lr_at(boundary + k, **fine) for k in (-1, 0, 1)]
        assert max(around) - min(around) < 1e-6
    # monotone: up in warm-up, down afterwards
    assert all(b >= a for a, b in zip(lrs[:50], lrs[1:51]))
    assert all(b <= a for a, b in zip(lrs[50:], lrs[51:]))


def test_warmup_start_and_no_warmup() -> None:
    assert lr_at(0, **{**KW, "warmup_lr_start": 0.001}) == 0.001
    assert lr_at(25, **{**KW, "warmup_lr_start": 0.001}) == pytest.approx(0.009 * 0.25 + 0.001)
    assert lr_at(0, **{**KW, "warmup_epochs": 0}) == pytest.approx(0.01)
    # fractional epochs are fine (iterations, not epochs, are the unit)
    assert lr_at(5, **{**KW, "warmup_epochs": 0.5}) == pytest.approx(0.01)


def test_short_run_without_cosine_phase() -> None:
    """warm-up + no-aug >= total: warm-up then flat, no division by zero."""
    kw = {**KW, "total_epochs": 8}
    assert lr_at(50, **kw) == pytest.approx(0.01)
    assert lr_at(51, **kw) == pytest.approx(MIN_LR)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="iters_per_epoch"):
        lr_at(0, **{**KW, "iters_per_epoch": 0})
    with pytest.raises(ValueError, match="total_epochs"):
        lr_at(0, **{**KW, "total_epochs": 0})
    with pytest.raises(ValueError, match="warmup_epochs"):
        lr_at(0, **{**KW, "warmup_epochs": -1})
    with pytest.raises(ValueError, match="iteration"):
        lr_at(-1, **KW)


def test_scaled_lr() -> None:
    assert scaled_lr(0.01, 64) == 0.01
    assert scaled_lr(0.01, 16) == 0.0025
    assert scaled_lr(0.01, 128) == 0.02
    with pytest.raises(ValueError, match="batch"):
        scaled_lr(0.01, 0)


def test_equals_official_yolox_schedule() -> None:
    lr_scheduler = pytest.importorskip("yolox.utils.lr_scheduler")
    ipe, epochs, base = 7, 40, 0.02
    for it in range(ipe * epochs):
        official = lr_scheduler.yolox_warm_cos_lr(
            base, 0.05, ipe * epochs, ipe * 5, 0.0, ipe * 15, it
        )
        ours = lr_at(it, ipe, epochs, base, warmup_epochs=5, no_aug_epochs=15, min_lr_ratio=0.05)
        assert ours == pytest.approx(official, rel=1e-12, abs=1e-18), it
