"""Drawing boxes on images (torch-free, OpenCV), for predictions and data previews."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def class_colour(index: int) -> tuple[int, int, int]:
    """A stable, well-spread BGR colour for class ``index``."""
    hue = (index * 0.618033988749895) % 1.0
    hsv = np.uint8([[[int(hue * 179), 200, 255]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def draw_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: Sequence[int],
    class_names: Sequence[str],
    scores: Sequence[float] | None = None,
) -> np.ndarray:
    """Draw ``[N, 4]`` xyxy ``boxes`` with their class names (and scores) on a copy of ``image``
    (``[H, W, 3]`` BGR uint8)."""
    out = image.copy()
    thickness = max(1, round(min(out.shape[:2]) / 400))
    for i, (box, label) in enumerate(zip(np.asarray(boxes), labels)):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        label = int(label)
        colour = class_colour(label)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        text = name if scores is None else f"{name} {float(scores[i]):.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        top = max(y1 - th - base, 0)
        cv2.rectangle(out, (x1, top), (x1 + tw, top + th + base), colour, -1)
        cv2.putText(
            out, text, (x1, top + th), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
            cv2.LINE_AA,
        )  # fmt: skip
    return out
