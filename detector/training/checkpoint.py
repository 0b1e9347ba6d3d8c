"""Checkpoint files written so that a kill at any moment leaves a usable file behind, and the
random states an exact resume needs.

Checkpoints go through :func:`detector.core.atomic.atomic_writer`: a temporary file renamed over the
old one, with the process's usual permissions (``0644`` normally, so teammates on a shared disk
can read ``best.pt``).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.core.atomic import atomic_writer


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` ``state`` to ``path`` atomically; returns the path."""
    with atomic_writer(path) as handle:
        torch.save(state, handle)
    return Path(path)


def rng_state() -> dict[str, Any]:
    """The global random states (torch CPU and CUDA, numpy, Python), for an exact resume."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`rng_state`; a missing entry is left alone."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
