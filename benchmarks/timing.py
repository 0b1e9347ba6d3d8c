"""Timing two or more sides in one run: interleaved repeats, so slow load changes hit every side.

Used by the latency benchmarks (``models_latency.py``, ``export_latency.py``), which run as
scripts from this folder (``python benchmarks/NAME.py``), so this module imports as ``timing``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping


def interleaved(
    calls: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 3
) -> dict[str, list[float]]:
    """Milliseconds of each call per repeat, after ``warmup`` untimed rounds. Every repeat runs
    each call once, starting one later in the order each time (a rotation), so no side always
    runs first."""
    names = list(calls)
    times: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(warmup):
        for call in calls.values():
            call()
    for r in range(repeats):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            calls[k]()
            times[k].append((time.perf_counter() - start) * 1e3)
    return times
