"""YOLOX's learning-rate schedule ("yoloxwarmcos") as a pure function of the iteration.

Three phases over ``total = iters_per_epoch * total_epochs`` iterations:

1. warm-up, iterations ``0 .. W`` (``W = iters_per_epoch * warmup_epochs``):
   ``(base_lr - warmup_lr_start) * (it / W) ** 2 + warmup_lr_start``;
2. cosine, ``W .. total - N`` (``N = iters_per_epoch * no_aug_epochs``): from ``base_lr`` down
   to ``min_lr = base_lr * min_lr_ratio``;
3. flat ``min_lr`` for the last ``N`` iterations (the no-augmentation phase).

The phase boundaries are those of the official ``yolox_warm_cos_lr`` (``it <= W`` is warm-up,
``it >= total - N`` is flat). The schedule is continuous at ``W`` and at ``total - N`` as long
as the cosine phase is not empty (``warmup_epochs + no_aug_epochs < total_epochs``).
"""

from __future__ import annotations

import math

LR_BATCH_REFERENCE = 64  # YOLOX quotes its learning rate per 64 images


def scaled_lr(lr_per_64: float, batch: int) -> float:
    """Linear scaling rule: ``lr_per_64 * batch / 64`` (YOLOX: 0.01 per 64 images)."""
    if batch <= 0:
        raise ValueError(f"scaled_lr: batch must be positive, got {batch}")
    return lr_per_64 * batch / LR_BATCH_REFERENCE


def lr_at(
    iteration: int,
    iters_per_epoch: int,
    total_epochs: int,
    base_lr: float,
    warmup_epochs: float = 5,
    warmup_lr_start: float = 0.0,
    no_aug_epochs: float = 15,
    min_lr_ratio: float = 0.05,
) -> float:
    """The learning rate at global ``iteration`` (0-based, counted over all epochs)."""
    if iters_per_epoch <= 0:
        raise ValueError(f"lr_at: iters_per_epoch must be positive, got {iters_per_epoch}")
    if total_epochs <= 0:
        raise ValueError(f"lr_at: total_epochs must be positive, got {total_epochs}")
    if warmup_epochs < 0 or no_aug_epochs < 0:
        raise ValueError(
            f"lr_at: warmup_epochs ({warmup_epochs}) and no_aug_epochs ({no_aug_epochs}) "
            "must not be negative"
        )
    if iteration < 0:
        raise ValueError(f"lr_at: iteration must not be negative, got {iteration}")
    total = iters_per_epoch * total_epochs
    warmup = iters_per_epoch * warmup_epochs
    no_aug = iters_per_epoch * no_aug_epochs
    min_lr = base_lr * min_lr_ratio
    if warmup > 0 and iteration <= warmup:
        return (base_lr - warmup_lr_start) * (iteration / warmup) ** 2 + warmup_lr_start
    if iteration >= total - no_aug:
        return min_lr
    span = total - warmup - no_aug  # > 0 here: warmup < iteration < total - no_aug
    progress = (iteration - warmup) / span
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
