"""detector.core.boxes: conversions agree with torchvision.ops on numpy and torch inputs."""

import numpy as np
import torch
from torchvision.ops import box_convert, box_iou

from detector.core import boxes


def test_conversions_match_torchvision_and_round_trip():
    rng = np.random.default_rng(0)
    xyxy = np.sort(rng.uniform(0, 100, (20, 2, 2)), axis=1).transpose(0, 2, 1).reshape(20, 4)
    xyxy = xyxy[:, [0, 2, 1, 3]].astype(np.float32)
    t = torch.from_numpy(xyxy)
    np.testing.assert_allclose(
        boxes.xyxy_to_cxcywh(xyxy), box_convert(t, "xyxy", "cxcywh").numpy(), atol=1e-5
    )
    np.testing.assert_allclose(
        boxes.xyxy_to_xywh(xyxy), box_convert(t, "xyxy", "xywh").numpy(), atol=1e-5
    )
    assert torch.allclose(boxes.cxcywh_to_xyxy(boxes.xyxy_to_cxcywh(t)), t, atol=1e-4)
    np.testing.assert_allclose(boxes.xywh_to_xyxy(boxes.xyxy_to_xywh(xyxy)), xyxy, atol=1e-4)
    np.testing.assert_allclose(
        boxes.box_iou_numpy(xyxy, xyxy[:5]), box_iou(t, t[:5]).numpy(), atol=1e-6
    )


def test_clip_and_area():
    b = np.array([[-5, -5, 20, 30], [10, 10, 5, 5]], dtype=np.float32)
    clipped = boxes.clip_boxes(b, width=15, height=25)
    np.testing.assert_array_equal(clipped[0], [0, 0, 15, 25])
    np.testing.assert_array_equal(boxes.box_area(b), [25 * 35, 0])
