"""Deterministic weights for golden tests, shared by ``benchmarks/models_golden.py`` and the tests.

Every state-dict entry is filled from its key name and shape alone (SplitMix64 over a SHA-256 seed
of the key, so no random-number library version is involved): the official YOLOX model and ours,
filled independently, hold the same numbers when their keys and shapes agree. Scales keep the
network's activations in a useful range (neither vanishing nor saturating the sigmoids): the
conv ``gain`` is chosen per model by the golden script and stored with the golden outputs.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

# our name -> the official exps/default name of the same model
OFFICIAL = {
    "yolox_nano": "yolox-nano",
    "yolox_tiny": "yolox-tiny",
    "yolox_s": "yolox-s",
    "yolox_m": "yolox-m",
    "yolox_l": "yolox-l",
    "yolox_x": "yolox-x",
    "yolox_darknet53": "yolov3",
}
GOLDEN_INPUT_SHAPE = (1, 3, 64, 96)  # non-square: catches a swapped width/height


def key_uniform(key: str, count: int) -> np.ndarray:
    """``count`` numbers in ``[0, 1)`` (float64) that depend only on ``key``."""
    seed = np.uint64(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))
    with np.errstate(over="ignore"):
        z = np.arange(1, count + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + seed
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


PERIOD = 10007  # a prime: long tensors repeat a block of this many values (keeps filling cheap)


def fill_value(key: str, shape: tuple[int, ...], gain: float = 1.0) -> np.ndarray:
    """The golden value of state-dict entry ``key`` with ``shape`` (float32, or int64 for
    ``num_batches_tracked``); conv weights have variance ``gain**2 / fan_in``."""
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    count = int(np.prod(shape, dtype=np.int64))
    u = np.resize(key_uniform(key, min(count, PERIOD)), count).reshape(shape)
    if key.endswith("running_var"):
        value = 0.5 + u  # positive
    elif key.endswith("running_mean"):
        value = (u - 0.5) * 0.2
    elif len(shape) == 4:  # conv weight: uniform with variance gain^2 / fan_in
        fan_in = shape[1] * shape[2] * shape[3]
        value = (2 * u - 1) * np.sqrt(3.0 / fan_in) * gain
    elif key.endswith("weight"):  # batch-norm scale
        value = 0.8 + 0.4 * u
    else:  # biases
        value = (u - 0.5) * 0.2
    return value.astype(np.float32)


def fill_state_dict(state: dict[str, torch.Tensor], gain: float = 1.0) -> dict[str, torch.Tensor]:
    """A new state dict with every entry of ``state`` replaced by its golden value."""
    return {
        key: torch.from_numpy(fill_value(key, tuple(t.shape), gain)).to(t.dtype)
        for key, t in state.items()
    }


def golden_input(shape: tuple[int, ...] = GOLDEN_INPUT_SHAPE) -> torch.Tensor:
    """A fixed image-like input, values 0-255."""
    return torch.from_numpy(
        (key_uniform("input", int(np.prod(shape))) * 255).astype(np.float32).reshape(shape)
    )
