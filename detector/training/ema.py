"""Exponential moving average of a model's weights (as YOLOX keeps for evaluation).

The average lives in a deep copy of the model, in eval mode with gradients off. Each
``update(model)`` moves every parameter towards the live one with the ramped decay
``d = decay * (1 - exp(-updates / 2000))`` (so early updates, when the weights change fast,
follow the model closely). As in YOLOX, floating-point buffers (BatchNorm running statistics) are
averaged like the parameters, so the statistics stay consistent with the averaged weights;
integer buffers (``num_batches_tracked``) are copied.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

RAMP_UPDATES = 2000  # the decay reaches 1 - 1/e of its value after this many updates


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``DataParallel`` / ``DistributedDataParallel`` and/or
    ``torch.compile``, else ``model``."""
    parallel = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while True:
        if isinstance(model, parallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


class ModelEMA:
    """Moving average of ``model``'s parameters.

    Args:
        model: the model being trained (may be wrapped in DDP / DataParallel).
        decay: the decay the ramp approaches.
        updates: updates already done (to continue a run without its state dict).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, updates: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ModelEMA: decay must be in [0, 1), got {decay}")
        self.ema = copy.deepcopy(unwrap(model)).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = updates

    def decay_at(self, updates: int) -> float:
        """The decay used by the ``updates``-th update."""
        return self.decay * (1.0 - math.exp(-updates / RAMP_UPDATES))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step: ``ema = d * ema + (1 - d) * model`` for parameters and float buffers; integer
        buffers are copied."""
        self.updates += 1
        d = self.decay_at(self.updates)
        live = unwrap(model)
        live_params = dict(live.named_parameters())
        for name, p in self.ema.named_parameters():
            p.lerp_(live_params[name].detach().to(p.dtype), 1.0 - d)
        live_buffers = dict(live.named_buffers())
        for name, b in self.ema.named_buffers():
            if b.dtype.is_floating_point:
                b.lerp_(live_buffers[name].detach().to(b.dtype), 1.0 - d)
            else:
                b.copy_(live_buffers[name])

    def state_dict(self) -> dict[str, Any]:
        """``{"ema": weights, "updates": n, "decay": d}``: enough to resume exactly."""
        return {"ema": self.ema.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict()``."""
        missing = {"ema", "updates"} - set(state)
        if missing:
            raise KeyError(f"ModelEMA.load_state_dict: missing {sorted(missing)}")
        self.ema.load_state_dict(state["ema"])
        self.updates = int(state["updates"])
        self.decay = float(state.get("decay", self.decay))
