"""The YOLOX detector: a neck (with its backbone) and the decoupled head.

Training mode returns the head's raw maps (the loss decodes them); evaluation mode returns
decoded predictions. Raw maps in evaluation mode come from the explicit :meth:`forward_raw`, so
no flag is ever flipped on a live model.
"""

from __future__ import annotations

from torch import Tensor, nn

from detector.models.decode import decode_outputs
from detector.models.head import DecoupledHead

STRIDES = (8, 16, 32)


class YOLOX(nn.Module):
    """Args:
        backbone: the neck (``PAFPN`` or ``YOLOFPN``, each owning its backbone); maps
            ``[B, 3, H, W]`` to three maps at strides 8, 16, 32.
        head: the decoupled head.
        name: model name (``yolox_s``), recorded in checkpoints.

    ``forward(x [B, 3, H, W])``: training -> ``list[Tensor[B, 5 + C, H_i, W_i]]`` raw logits
    (``reg | obj | cls``); evaluation -> ``Tensor[B, N, 5 + C]`` with ``cx, cy, w, h`` in input
    pixels, objectness and class scores after sigmoid (the official YOLOX layout).
    """

    strides: tuple[int, ...] = STRIDES

    def __init__(self, backbone: nn.Module, head: DecoupledHead, name: str = "yolox") -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.name = name

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward_raw(self, x: Tensor) -> list[Tensor]:
        """``[B, 3, H, W]`` -> raw maps ``[B, 5 + C, H / s, W / s]`` for ``s`` in 8, 16, 32."""
        return self.head(self.backbone(x))

    def forward(self, x: Tensor) -> list[Tensor] | Tensor:
        maps = self.forward_raw(x)
        if self.training:
            return maps
        return decode_outputs(maps, self.strides)
