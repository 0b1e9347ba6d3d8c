"""Model size and cost: parameters and GFLOPs (YOLOX counts 2 x multiply-accumulates)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.hooks import RemovableHandle

from detector.core.preprocess import as_size


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not), buffers excluded."""
    return sum(p.numel() for p in model.parameters())


_COUNTED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


def _macs(module: nn.Module, output: Tensor) -> int:
    """Multiply-accumulates of one Conv2d, Linear or BatchNorm2d call producing ``output``.

    Counted as thop (which produced YOLOX's table) counts them: a bias adds one per output
    element, a batch norm two.
    """
    if isinstance(module, nn.BatchNorm2d):
        return 2 * output.numel()
    bias = int(getattr(module, "bias", None) is not None)
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * ((module.in_channels // module.groups) * kh * kw + bias)
    if isinstance(module, nn.Linear):
        return output.numel() * (module.in_features + bias)
    return 0


def count_gflops(model: nn.Module, imgsz: int | tuple[int, int] = 640) -> float:
    """GFLOPs of one forward pass on a ``[1, 3, h, w]`` input, as ``2 x MACs`` of the
    convolutions, linear layers and batch norms, counted the way YOLOX's published table counts
    them (activations, pooling and upsampling are free). A fused model loses the batch-norm
    share (under 0.5 %).

    Runs on the meta device (shapes only, no arithmetic), so it is instant for any size and
    leaves ``model`` untouched.
    """
    height, width = as_size(imgsz)
    total = 0

    def hook(module: nn.Module, _inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        total += _macs(module, output)

    handles: list[RemovableHandle] = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _COUNTED)
    ]
    try:
        tensors = {
            name: torch.empty_like(t, device="meta")
            for name, t in [*model.named_parameters(), *model.named_buffers()]
        }
        x = torch.empty(1, 3, height, width, device="meta")
        with torch.no_grad():
            functional_call(model, tensors, (x,))
    finally:
        for handle in handles:
            handle.remove()
    return 2 * total / 1e9
