"""The one home of every prediction-time value and its default.

Every command-line flag (``predict``, ``bench``, ``export onnx --nms``, ``export triton``,
``demo``), the server's settings, the v1 and v2 request parsers, export verification and the
plots read their defaults from here, so a default changes in one place. Plain numbers and one
dataclass with no imports beyond the standard library, so the command line can show them as
option defaults in an install without PyTorch (``detector[serve]``).

Two sets of thresholds exist on purpose, each with one home:

- **prediction** (:class:`PredictParams`): what a user sees, serves or exports with in-graph NMS.
- **evaluation** (:data:`EVAL_CONF`, :data:`EVAL_IOU`): what mAP is measured with (YOLOX's
  ``test_conf`` and ``nmsthre``); a low threshold so the precision-recall curve is complete.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PREDICT_CONF = 0.25
"""Score (objectness x class) below which a detection is dropped when predicting or serving."""
PREDICT_IOU = 0.45
"""NMS IoU threshold when predicting or serving (per class)."""
MAX_DET = 300
"""Most detections kept per image (also K of the in-graph NMS and of the v2 output tensors)."""

EVAL_CONF = 0.01
"""Score threshold for mAP evaluation (YOLOX's ``test_conf``)."""
EVAL_IOU = 0.65
"""NMS IoU threshold for mAP evaluation (YOLOX's ``nmsthre``)."""

INPUT_STRIDE = 32
"""Input sizes are multiples of the largest stride of the detection head."""


@dataclass(frozen=True)
class PredictParams:
    """The values one prediction call takes, each with its one default.

    ``classes`` keeps only those class ids (``None``: every class). The input size is not a
    per-call value: it comes from the model file (see ``detector.models.checkpoint`` for
    checkpoints, the export metadata otherwise).
    """

    conf: float = PREDICT_CONF
    iou: float = PREDICT_IOU
    max_det: int = MAX_DET
    classes: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.conf <= 1.0:
            raise ValueError(f"conf must be within [0, 1], got {self.conf}")
        if not 0.0 <= self.iou <= 1.0:
            raise ValueError(f"iou must be within [0, 1], got {self.iou}")
        if self.max_det < 1:
            raise ValueError(f"max_det must be at least 1, got {self.max_det}")


def check_input_size(size: int | Sequence[int], *, source: str = "imgsz") -> tuple[int, int]:
    """An input size as ``(height, width)``, each a positive multiple of :data:`INPUT_STRIDE`.

    Args:
        size: one side for a square input, or ``(height, width)``.
        source: what to name in the error (a flag, a file, a metadata field).

    Raises:
        ValueError: not one or two positive multiples of 32, naming ``source``.
    """
    sides = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(sides) != 2 or any(s <= 0 or s % INPUT_STRIDE for s in sides):
        raise ValueError(
            f"{source}: input size must be positive multiples of {INPUT_STRIDE} "
            f"(e.g. 416 or 640), got {size!r}"
        )
    return sides[0], sides[1]
