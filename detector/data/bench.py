"""Throughput of the training pipeline (augment + collate), in images per second."""

from __future__ import annotations

import time
from collections.abc import Iterable


def images_per_second(loader: Iterable, batches: int, warmup: int = 2) -> float:
    """Images per second over ``batches`` batches after ``warmup`` (worker start-up excluded)."""
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    count = 0
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        count += len(batch[0])
    return count / (time.perf_counter() - start)
