"""Which mixed precision a training run uses on its device.

CUDA: float16 with a ``GradScaler``. CPU: bfloat16 where the processor computes bfloat16 natively:
AMX tiles (Intel Sapphire Rapids and later; a yolox_tiny step at 416, batch 8, 2.0 s -> 1.1 s) or
AVX-512 BF16 (AMD Zen 4 and later, Intel Cooper Lake; the same network's forward + backward
1.15 s -> 0.68 s on a Zen 4 EPYC, benchmarks/train_step.md). bfloat16 has float32's exponent
range, so no loss scaling is needed. Other CPUs train in float32: without native bfloat16 the
casts cost more than they save. The weights, the optimizer state, the loss and the EMA stay
float32 in every case.
"""

from __future__ import annotations

import torch


def _cpu_probe(name: str) -> bool:
    probe = getattr(torch.cpu, name, None)
    return bool(probe()) if probe is not None else False


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively: AMX tiles or AVX-512 BF16 instructions."""
    return _cpu_probe("_is_amx_tile_supported") or _cpu_probe("_is_avx512_bf16_supported")


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype for ``device`` when ``amp`` is on, or ``None`` for float32 training."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def describe(dtype: torch.dtype | None) -> str:
    """``"float16 autocast"`` / ``"bfloat16 autocast"`` / ``"float32"``, for the run log."""
    return "float32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"
